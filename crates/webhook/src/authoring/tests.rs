#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::path::PathBuf;

use super::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn docs(source: &str, text: &str) -> Vec<Document> {
    let mut documents = Vec::new();
    let mut findings = Vec::new();
    parse_documents(source, text, &mut documents, &mut findings);
    assert!(findings.is_empty(), "{findings:?}");
    documents
}

fn request(action: Action) -> RenderRequest {
    RenderRequest {
        plugin: None,
        virtual_cluster: None,
        action,
        namespace: "tenants".into(),
        options: RenderOptions::new(Settings::default()),
    }
}

const SEED: &str = "apiVersion: kosmos.io/v1alpha1\nkind: VirtualClusterPlugin\nmetadata:\n  name: apiserver-network-proxy\nspec:\n  pluginSources:\n    yaml:\n      path:\n        pvPath: plugin-store-ubuntu-statefulset-0:/pv\n";

#[test]
fn every_docs_example_is_valid() {
    let dir = repo().join("docs/examples");
    let (documents, findings) = read_inputs(&[dir]).unwrap();
    assert!(findings.is_empty(), "{findings:?}");
    // The examples keep node files under the folder the docs tell admins to allow.
    let settings = Settings {
        allowed_host_path_prefixes: vec!["/data/kosmos-plugins".into()],
        ..Settings::default()
    };
    let report = validate(&documents, "tenants", &settings);
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
    assert!(report.checked >= 8, "only {} objects", report.checked);
    assert_eq!(report.skipped, 0);
}

/// The table the real apiserver is tested against (e2e/tests/crds.rs): validate finds every
/// case, naming the field the table names.
#[test]
fn validate_rejects_the_whole_invalid_spec_table_naming_each_field() {
    #[derive(serde::Deserialize)]
    struct Case {
        name: String,
        field: String,
        message: String,
        object: serde_json::Value,
    }
    let path = repo().join("crates/api/testdata/invalid.yaml");
    let cases: Vec<Case> = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(cases.len() >= 30);
    let mut misses = Vec::new();
    for case in cases {
        let document = Document {
            source: "invalid.yaml".into(),
            value: case.object,
        };
        let report = validate(&[document], "tenants", &Settings::default());
        let hit = report
            .findings
            .iter()
            .any(|f| f.field == case.field && f.message.contains(&case.message));
        if !hit {
            misses.push(format!("{}: {:?}", case.name, report.findings));
        }
    }
    assert!(misses.is_empty(), "{}", misses.join("\n"));
}

#[test]
fn unknown_fields_are_found_where_the_apiserver_would_prune_them() {
    let text = "apiVersion: kosmos.io/v1alpha1\nkind: VirtualClusterPlugin\nmetadata:\n  name: typo\n  labels: {a: b}\nspec:\n  pluginSource: {}\n  pluginSources:\n    chart:\n      repo: https://charts.example.com\n      name: x\n      valuesfile: {uri: https://example.com/v.yaml}\n";
    let report = validate(&docs("typo.yaml", text), "tenants", &Settings::default());
    let fields: Vec<&str> = report.findings.iter().map(|f| f.field.as_str()).collect();
    assert_eq!(
        fields,
        ["spec.pluginSource", "spec.pluginSources.chart.valuesfile"]
    );
    assert_eq!(
        report.findings[0].to_string(),
        "typo.yaml: VirtualClusterPlugin tenants/typo: spec.pluginSource: unknown field: the CRD \
         has no such field (kubectl refuses it; a client without strict validation loses it \
         silently); check the spelling"
    );
    // Below a preserve-unknown-fields object (Kosmos's kubeInKubeConfig) anything goes.
    let vc = "apiVersion: kosmos.io/v1alpha1\nkind: VirtualCluster\nmetadata:\n  name: c\nspec:\n  kubeInKubeConfig: {anything: {goes: 1}}\n";
    let report = validate(&docs("vc.yaml", vc), "tenants", &Settings::default());
    assert!(report.findings.is_empty(), "{:?}", report.findings);
}

#[test]
fn findings_name_file_document_object_and_field() {
    let text = format!(
        "{SEED}---\napiVersion: kosmos.io/v1alpha1\nkind: VirtualClusterPlugin\nmetadata:\n  name: bad\n  namespace: team-a\nspec:\n  timeoutSeconds: soon\n  pluginSources: {{}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: other\n"
    );
    let report = validate(
        &docs("plugins.yaml", &text),
        "tenants",
        &Settings::default(),
    );
    assert_eq!(report.checked, 2);
    assert_eq!(report.skipped, 1);
    assert_eq!(report.findings.len(), 1, "{:?}", report.findings);
    let finding = &report.findings[0];
    assert_eq!(finding.source, "plugins.yaml#2");
    assert_eq!(finding.object, "VirtualClusterPlugin team-a/bad");
    assert_eq!(finding.field, "spec.timeoutSeconds");
    assert!(finding.message.contains("invalid type"), "{finding}");
}

#[test]
fn a_missing_required_field_is_named() {
    let vc = "apiVersion: kosmos.io/v1alpha1\nkind: VirtualCluster\nmetadata:\n  name: c\n";
    let report = validate(&docs("vc.yaml", vc), "tenants", &Settings::default());
    assert_eq!(report.findings.len(), 1, "{:?}", report.findings);
    assert_eq!(report.findings[0].field, "spec");
}

#[test]
fn a_yaml_syntax_error_is_a_finding() {
    let mut documents = Vec::new();
    let mut findings = Vec::new();
    parse_documents("broken.yaml", "a: [1, 2\n", &mut documents, &mut findings);
    assert!(documents.is_empty());
    assert_eq!(findings.len(), 1);
    assert!(
        findings[0]
            .to_string()
            .starts_with("broken.yaml: not valid YAML:"),
        "{}",
        findings[0]
    );
}

#[test]
fn validate_finds_what_only_the_webhook_refuses() {
    let text = SEED.replace("/pv", "/etc/plugins");
    let report = validate(&docs("etc.yaml", &text), "tenants", &Settings::default());
    assert_eq!(report.findings.len(), 1, "{:?}", report.findings);
    let finding = &report.findings[0];
    assert_eq!(finding.field, "spec.pluginSources.yaml.path.pvPath");
    assert!(
        finding
            .message
            .starts_with("the webhook would refuse it: the claim is mounted at /etc"),
        "{finding}"
    );

    let host = "apiVersion: kosmos.io/v1alpha1\nkind: VirtualClusterPlugin\nmetadata:\n  name: h\nspec:\n  pluginSources:\n    yaml:\n      path:\n        hostPath: {path: /root/x}\n";
    let strict = Settings {
        allowed_host_path_prefixes: vec!["/data".into()],
        ..Settings::default()
    };
    let open = Settings {
        allowed_host_path_prefixes: vec!["/".into()],
        ..Settings::default()
    };
    assert!(
        validate(&docs("h.yaml", host), "tenants", &open)
            .findings
            .is_empty()
    );
    // Without a list of folders, as the webhook's default, no hostPath passes.
    let closed = validate(&docs("h.yaml", host), "tenants", &Settings::default());
    assert_eq!(
        closed.findings[0].field,
        "spec.pluginSources.yaml.path.hostPath"
    );
    let report = validate(&docs("h.yaml", host), "tenants", &strict);
    assert_eq!(
        report.findings[0].field,
        "spec.pluginSources.yaml.path.hostPath.path"
    );
}

#[test]
fn render_is_the_webhook_patch_on_the_bare_job() {
    let documents = docs("seed.yaml", SEED);
    let job = render(&documents, &request(Action::Install)).unwrap();
    // The same thing by hand: the bare Job, mutate(), the patch.
    let plugin: VirtualClusterPlugin = {
        let mut p: VirtualClusterPlugin = serde_yaml::from_str(SEED).unwrap();
        p.metadata.namespace = Some("tenants".into());
        p
    };
    let vc = stand_in_virtual_cluster("tenants");
    let bare = bare_job(&plugin, &vc, Action::Install, DEFAULT_EXECUTOR_IMAGE);
    let mutation = mutate_job(&bare, &plugin, &vc, &Settings::default()).unwrap();
    let mut expected = serde_json::to_value(&bare).unwrap();
    json_patch::patch(&mut expected, &mutation.patch).unwrap();
    assert_eq!(serde_json::to_value(&job).unwrap(), expected);
    assert_eq!(
        job.annotations()[contract::INJECTED_ANNOTATION],
        mutation.mark
    );
    let container = &job.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(
        container.command.as_ref().unwrap()[2],
        crate::mutation::EXECUTOR_SCRIPT
    );
    assert!(container.env.iter().flatten().any(
        |e| e.name == "VIRTUAL_CLUSTER" && e.value.as_deref() == Some(STAND_IN_VIRTUAL_CLUSTER)
    ));
}

#[test]
fn render_uses_the_given_virtual_cluster_and_action() {
    let vc = "apiVersion: kosmos.io/v1alpha1\nkind: VirtualCluster\nmetadata:\n  name: tenant1-cluster\nspec: {}\n";
    let documents = docs("all.yaml", &format!("{SEED}---\n{vc}"));
    let job = render(&documents, &request(Action::Uninstall)).unwrap();
    let labels = job.labels();
    assert_eq!(labels[contract::VIRTUAL_CLUSTER_LABEL], "tenant1-cluster");
    assert_eq!(labels[contract::ACTION_LABEL], "uninstall");
    assert_eq!(job.namespace().as_deref(), Some("tenants"));
}

#[test]
fn render_prints_the_denial_word_for_word() {
    let text = SEED.replace("/pv", "/etc/plugins");
    let documents = docs("etc.yaml", &text);
    match render(&documents, &request(Action::Install)) {
        Err(RenderError::Denied { source, message }) => {
            assert_eq!(source, "etc.yaml");
            assert!(
                message.starts_with(
                    "VirtualClusterPlugin tenants/apiserver-network-proxy: \
                     spec.pluginSources.yaml.path.pvPath: the claim is mounted at /etc"
                ),
                "{message}"
            );
        }
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[test]
fn render_asks_which_plugin_when_there_are_several() {
    let two = format!(
        "{SEED}---\n{}",
        SEED.replace("apiserver-network-proxy", "other")
    );
    let documents = docs("two.yaml", &two);
    match render(&documents, &request(Action::Install)) {
        Err(RenderError::Findings(f)) => {
            assert!(f[0].message.contains("choose one with --plugin"), "{f:?}");
        }
        other => panic!("expected findings, got {other:?}"),
    }
    let mut req = request(Action::Install);
    req.plugin = Some("other".into());
    let job = render(&documents, &req).unwrap();
    assert_eq!(job.labels()[contract::PLUGIN_LABEL], "other");
}

#[test]
fn render_refuses_a_virtual_cluster_in_another_namespace() {
    let vc = "apiVersion: kosmos.io/v1alpha1\nkind: VirtualCluster\nmetadata:\n  name: c\n  namespace: elsewhere\nspec: {}\n";
    let documents = docs("all.yaml", &format!("{SEED}---\n{vc}"));
    match render(&documents, &request(Action::Install)) {
        Err(RenderError::Findings(f)) => assert_eq!(f[0].field, "metadata.namespace"),
        other => panic!("expected findings, got {other:?}"),
    }
}

#[test]
fn render_carries_the_virtual_clusters_options_and_their_hash() {
    let vc = "apiVersion: kosmos.io/v1alpha1\nkind: VirtualCluster\nmetadata:\n  name: tenant1-cluster\nspec:\n  pluginOptions:\n  - name: dnsIP\n    value: 10.96.0.10\n  - name: password\n    valueFrom:\n      secretKeyRef: {name: db, key: password}\n";
    let documents = docs("all.yaml", &format!("{SEED}---\n{vc}"));
    let job = render(&documents, &request(Action::Install)).unwrap();
    let plugin: VirtualClusterPlugin = serde_yaml::from_str(SEED).unwrap();
    let cluster: VirtualCluster = serde_yaml::from_str(vc).unwrap();
    assert_eq!(
        job.annotations()[contract::SPEC_HASH_ANNOTATION],
        contract::install_hash(
            &plugin.spec,
            cluster.spec.plugin_options.as_deref().unwrap()
        )
    );
    let pod = job.spec.unwrap().template.spec.unwrap();
    let env = pod.containers[0].env.clone().unwrap();
    let get = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(get("PLUGIN_OPTION_0_VALUE").as_deref(), Some("10.96.0.10"));
    assert_eq!(
        get("PLUGIN_OPTION_1_FILE").as_deref(),
        Some("/kosmos/options/1/value")
    );
    assert!(
        pod.volumes.unwrap().iter().any(|v| v
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref())
            == Some("db"))
    );
}
