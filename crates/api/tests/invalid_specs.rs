//! The table of invalid specs in `testdata/invalid.yaml`: each is rejected by the Rust validation
//! with an error that names the field. The e2e tests send the same table to a real apiserver.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::path::PathBuf;

use kosmos_api::{VirtualCluster, VirtualClusterPlugin, validate_plugin, validate_virtual_cluster};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    name: String,
    field: String,
    message: String,
    apiserver: String,
    object: serde_yaml::Value,
}

fn cases() -> Vec<Case> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/invalid.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

/// The Rust verdict on one object: every error message, each prefixed by its field.
fn rust_errors(object: &serde_yaml::Value) -> Vec<String> {
    let kind = object["kind"].as_str().unwrap_or_default();
    // Parsing text (as a client would) makes serde_yaml report the path of a type error.
    let text = serde_yaml::to_string(object).unwrap();
    let result = match kind {
        "VirtualClusterPlugin" => serde_yaml::from_str::<VirtualClusterPlugin>(&text)
            .map_err(|e| e.to_string())
            .map(|p| validate_plugin(&p)),
        "VirtualCluster" => serde_yaml::from_str::<VirtualCluster>(&text)
            .map_err(|e| e.to_string())
            .map(|vc| validate_virtual_cluster(&vc)),
        other => panic!("unknown kind {other}"),
    };
    match result {
        Err(parse_error) => vec![parse_error],
        Ok(Ok(())) => vec![],
        Ok(Err(invalid)) => invalid.errors.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn table_is_large_and_covers_every_verdict() {
    let cases = cases();
    assert!(cases.len() >= 60, "only {} cases", cases.len());
    for verdict in ["cel", "schema", "none"] {
        assert!(
            cases.iter().any(|c| c.apiserver == verdict),
            "no case for {verdict}"
        );
    }
    for case in &cases {
        assert!(
            ["cel", "schema", "none"].contains(&case.apiserver.as_str()),
            "{}: apiserver must be cel, schema or none",
            case.name
        );
    }
}

#[test]
fn every_invalid_spec_is_rejected_naming_its_field() {
    let mut failures = Vec::new();
    for case in cases() {
        let errors = rust_errors(&case.object);
        let named = errors
            .iter()
            .any(|e| e.starts_with(&format!("{}:", case.field)) && e.contains(&case.message));
        if !named {
            failures.push(format!(
                "{}: expected `{}: …{}…`, got {errors:?}",
                case.name, case.field, case.message
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn error_names_the_object() {
    let case = cases().into_iter().find(|c| c.name == "no source").unwrap();
    let mut plugin: VirtualClusterPlugin = serde_yaml::from_value(case.object).unwrap();
    plugin.metadata.namespace = Some("team-a".into());
    let err = validate_plugin(&plugin).unwrap_err().to_string();
    assert_eq!(
        err,
        "VirtualClusterPlugin team-a/no-source is invalid: spec.pluginSources: at least one of chart or yaml must be set"
    );
}
