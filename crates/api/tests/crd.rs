//! The committed CRD YAML is what the types generate, and it reads back to the same CRDs.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::path::PathBuf;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kosmos_api::crd;

fn chart_crd_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../charts/kosmos-plugins/files/crds")
}

#[test]
fn committed_yaml_matches_the_types_and_round_trips() {
    for generated in crd::crds() {
        let path = chart_crd_dir().join(crd::file_name(&generated));
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; run `make crds`", path.display()));
        assert!(
            committed == crd::to_yaml(&generated).unwrap(),
            "{} is stale; run `make crds`",
            path.display()
        );
        let parsed: CustomResourceDefinition = serde_yaml::from_str(&committed).unwrap();
        assert_eq!(parsed, generated);
    }
}

#[test]
fn virtual_cluster_has_no_status_subresource_like_kosmos() {
    let crds = crd::crds();
    let vc = crds
        .iter()
        .find(|c| c.spec.names.kind == "VirtualCluster")
        .unwrap();
    assert!(vc.spec.versions.iter().all(|v| v.subresources.is_none()));
    assert_eq!(
        vc.spec.names.short_names.as_deref(),
        Some(&["vc".to_string()][..])
    );
    let vp = crds
        .iter()
        .find(|c| c.spec.names.kind == "VirtualClusterPlugin")
        .unwrap();
    assert_eq!(
        vp.spec.names.short_names.as_deref(),
        Some(&["vp".to_string()][..])
    );
    assert_eq!(vp.spec.scope, "Namespaced");
}

#[test]
fn kosmos_fields_survive_pruning() {
    // Every field of Kosmos's published VirtualCluster CRD must exist in ours.
    let crds = crd::crds();
    let vc = crds
        .iter()
        .find(|c| c.spec.names.kind == "VirtualCluster")
        .unwrap();
    let schema = serde_json::to_value(
        vc.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap();
    let spec = &schema["properties"]["spec"]["properties"];
    for field in [
        "kubeconfig",
        "externalIP",
        "externalIps",
        "kubeInKubeConfig",
        "promotePolicies",
        "promoteResources",
        "pluginSet",
        "pluginOptions",
    ] {
        assert!(spec.get(field).is_some(), "spec.{field} missing");
    }
    assert_eq!(
        spec["kubeInKubeConfig"]["x-kubernetes-preserve-unknown-fields"],
        true
    );
    assert!(
        spec["promoteResources"]["properties"]["nodeInfos"]["items"]["properties"]["nodeName"]
            .is_object()
    );
    assert!(spec["promotePolicies"]["items"]["properties"]["labelSelector"].is_object());
    let status = &schema["properties"]["status"]["properties"];
    for field in [
        "phase",
        "reason",
        "updateTime",
        "port",
        "portMap",
        "vipMap",
        "conditions",
        "plugins",
    ] {
        assert!(status.get(field).is_some(), "status.{field} missing");
    }
}
