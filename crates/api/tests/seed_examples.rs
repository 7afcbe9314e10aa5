//! The design document's examples against the types, the validation and the generated CRD.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::path::PathBuf;

use kosmos_api::{VirtualCluster, VirtualClusterPlugin, validate_plugin, validate_virtual_cluster};
use serde_yaml::Value;

fn testdata(rel: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn walk_through_virtual_cluster_is_accepted_as_written() {
    let vc: VirtualCluster = serde_yaml::from_str(&testdata("valid/tenant1-cluster.yaml")).unwrap();
    validate_virtual_cluster(&vc).unwrap();
    let set = vc.spec.plugin_set.as_ref().unwrap();
    let enabled: Vec<_> = set.enabled.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(enabled, ["pluginA", "pluginB"]);
    assert_eq!(set.disabled[0].name, "pluginC");
    let promoted = vc.spec.promote_resources.as_ref().unwrap();
    assert_eq!(promoted.node_names(), ["node1", "node2"]);
    let resources = promoted.resources.as_ref().unwrap();
    assert_eq!(resources["cpu"].0, "10");
    assert_eq!(resources["memory"].0, "100Gi");
    assert_eq!(vc.spec.kubeconfig.as_deref(), Some("XXXXXX"));
}

#[test]
fn walk_through_plugin_is_accepted_as_written() {
    let plugin: VirtualClusterPlugin =
        serde_yaml::from_str(&testdata("valid/apiserver-network-proxy.yaml")).unwrap();
    validate_plugin(&plugin).unwrap();
    let path = &plugin.spec.plugin_sources.yaml.as_ref().unwrap().path;
    assert_eq!(
        path.pv_path.as_deref(),
        Some("plugin-store-ubuntu-statefulset-0:/pv")
    );
    assert!(plugin.spec.success_state_command.is_none());
}

#[test]
fn field_list_as_written_is_not_yaml() {
    // The command nests unescaped double quotes inside a double-quoted scalar.
    let err = serde_yaml::from_str::<Value>(&testdata("seed/field-list.yaml")).unwrap_err();
    assert!(err.to_string().contains("line 7"), "{err}");
}

#[test]
fn field_list_with_repaired_quotes_is_still_no_config() {
    let text = testdata("seed/field-list-quoted.yaml");
    // Typed, it fails on the plain-path hostPath: the CRD takes only {path, nodeName}.
    let err = serde_yaml::from_str::<VirtualClusterPlugin>(&text).unwrap_err();
    assert!(
        err.to_string()
            .contains("spec.pluginSources.chart.storage.hostPath"),
        "{err}"
    );
    // With the plain paths dropped, validation names every remaining problem.
    let mut value: Value = serde_yaml::from_str(&text).unwrap();
    for storage in ["storage", "valuesFile"] {
        value["spec"]["pluginSources"]["chart"][storage]
            .as_mapping_mut()
            .unwrap()
            .remove("hostPath");
    }
    let plugin: VirtualClusterPlugin = serde_yaml::from_value(value).unwrap();
    let errors = validate_plugin(&plugin).unwrap_err().errors;
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    for expected in [
        "spec.pluginSources.chart",
        "spec.pluginSources.chart.repo",
        "spec.pluginSources.chart.storage",
        "spec.pluginSources.chart.storage.pvPath",
        "spec.pluginSources.chart.valuesFile",
        "spec.pluginSources.chart.values",
        "spec.pluginSources.yaml.path",
        "spec.pluginSources.yaml.path.pvPath",
    ] {
        assert!(
            fields.contains(&expected),
            "no error for {expected} in {errors:?}"
        );
    }
}

#[test]
fn types_carry_every_field_of_the_field_list() {
    let listed: Value = serde_yaml::from_str(&testdata("seed/field-list-quoted.yaml")).unwrap();
    let crds = kosmos_api::crd::crds();
    let crd = crds
        .iter()
        .find(|c| c.spec.names.kind == "VirtualClusterPlugin")
        .unwrap();
    let schema = serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap();
    let mut missing = Vec::new();
    check_keys(
        &listed["spec"],
        &schema["properties"]["spec"],
        "spec",
        &mut missing,
    );
    assert!(
        missing.is_empty(),
        "fields of the design document missing from the CRD: {missing:?}"
    );
}

/// Every mapping key in `value` must be a property at the same place in `schema`.
fn check_keys(value: &Value, schema: &serde_json::Value, at: &str, missing: &mut Vec<String>) {
    let Value::Mapping(map) = value else { return };
    for (key, child) in map {
        let key = key.as_str().unwrap_or_default();
        let path = format!("{at}.{key}");
        match schema["properties"].get(key) {
            Some(child_schema) => check_keys(child, child_schema, &path, missing),
            None => missing.push(path),
        }
    }
}

#[test]
fn corrected_field_list_keeps_every_field_and_passes() {
    let plugin: VirtualClusterPlugin =
        serde_yaml::from_str(&testdata("valid/field-list-corrected.yaml")).unwrap();
    validate_plugin(&plugin).unwrap();
    let chart = plugin.spec.plugin_sources.chart.as_ref().unwrap();
    assert!(chart.storage.as_ref().unwrap().pv_path.is_some());
    let values_file = chart
        .values_file
        .as_ref()
        .unwrap()
        .host_path
        .as_ref()
        .unwrap();
    assert_eq!(values_file.node_name.as_deref(), Some("node1"));
    let yaml = plugin.spec.plugin_sources.yaml.as_ref().unwrap();
    assert_eq!(yaml.path.uri.as_deref(), Some("https://XXXX.yaml"));
    let command = plugin.spec.success_state_command.as_deref().unwrap();
    assert!(
        command.contains("echo \"所有的Pod都处于Running状态。\""),
        "{command}"
    );
}
