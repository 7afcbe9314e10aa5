//! Every file in docs/examples: parsed, validated, turned into an executor pod by the mutation,
//! and accepted by a real apiserver with the chart's CRDs (their CEL rules included).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;

use kosmos_api::contract::Action;
use kosmos_api::{VirtualCluster, VirtualClusterPlugin, validate_plugin, validate_virtual_cluster};
use kosmos_e2e::{Cluster, TestNamespace};
use kosmos_webhook::mutate_job;
use serde::Deserialize;

fn examples() -> Vec<(PathBuf, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 7, "examples missing in {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect()
}

fn documents(text: &str) -> Vec<serde_yaml::Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn every_example_validates_and_mutates() {
    let mut plugins = 0;
    for (path, text) in examples() {
        for doc in documents(&text) {
            match doc["kind"].as_str() {
                Some("VirtualClusterPlugin") => {
                    let mut plugin: VirtualClusterPlugin = serde_yaml::from_value(doc).unwrap();
                    plugin.metadata.namespace = Some("tenants".into());
                    validate_plugin(&plugin).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    let vc = common::virtual_cluster("tenants", "tenant1-cluster");
                    for action in [Action::Install, Action::Uninstall] {
                        let job = common::bare_job("tenants", "tenant1-cluster", &plugin, action);
                        let mutation = mutate_job(&job, &plugin, &vc, &common::any_host_path())
                            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                        let job = mutation.apply(&job).unwrap();
                        let pod = job.spec.unwrap().template.spec.unwrap();
                        let env: Vec<String> = pod.containers[0]
                            .env
                            .iter()
                            .flatten()
                            .map(|e| e.name.clone())
                            .collect();
                        let sources = &plugin.spec.plugin_sources;
                        if sources.yaml.is_some() {
                            assert!(env.contains(&"YAML_PATH".into()), "{}", path.display());
                        }
                        if sources.chart.is_some() {
                            assert!(env.contains(&"CHART_RELEASE".into()), "{}", path.display());
                        }
                    }
                    plugins += 1;
                }
                Some("VirtualCluster") => {
                    let vc: VirtualCluster = serde_yaml::from_value(doc).unwrap();
                    validate_virtual_cluster(&vc)
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                }
                other => panic!("{}: unexpected kind {other:?}", path.display()),
            }
        }
    }
    assert!(plugins >= 7);
}

#[tokio::test]
async fn every_example_is_accepted_by_the_apiserver() {
    let client = kosmos_e2e::host().await.unwrap();
    kosmos_e2e::install_crds(&client).await.unwrap();
    let ns = TestNamespace::create(Cluster::Host, "webhook-docs")
        .await
        .unwrap();
    for (path, text) in examples() {
        let applied = kosmos_e2e::apply_yaml(&client, ns.name(), &text)
            .await
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        assert!(!applied.is_empty(), "{}", path.display());
    }
    ns.delete().await.unwrap();
}
