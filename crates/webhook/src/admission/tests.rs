#![allow(clippy::unwrap_used)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use kube::runtime::reflector;
use kube::runtime::watcher;
use serde_json::Value;
use tower::ServiceExt;

use super::*;

pub(crate) const OPERATOR: &str = "system:serviceaccount:kosmos-system:virtual-cluster-operator";

fn seed_plugin() -> VirtualClusterPlugin {
    let path = format!(
        "{}/../api/testdata/valid/apiserver-network-proxy.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut p: VirtualClusterPlugin =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    p.metadata.namespace = Some("tenants".into());
    p
}

pub(crate) fn state(synced: bool) -> Arc<AdmissionState> {
    let (plugins, mut plugin_writer) = reflector::store();
    let (virtual_clusters, mut vc_writer) = reflector::store();
    plugin_writer.apply_watcher_event(&watcher::Event::Apply(seed_plugin()));
    let mut vc = VirtualCluster::new("tenant1-cluster", Default::default());
    vc.metadata.namespace = Some("tenants".into());
    vc_writer.apply_watcher_event(&watcher::Event::Apply(vc));
    Arc::new(AdmissionState {
        plugins: plugins.into(),
        virtual_clusters: virtual_clusters.into(),
        settings: Settings::default(),
        operator_user: OPERATOR.into(),
        metrics: Arc::new(Metrics::default()),
        synced: AtomicBool::new(synced),
        mark_key: Default::default(),
    })
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/testdata/reviews/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).unwrap();
    text.replace("@SPEC_HASH@", &contract::spec_hash(&seed_plugin().spec))
        .into_bytes()
}

async fn post(state: Arc<AdmissionState>, body: Vec<u8>) -> Value {
    let response = router(state)
        .oneshot(
            Request::post("/mutate")
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let review: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(review["kind"], "AdmissionReview");
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    review["response"].clone()
}

/// kube writes the patch bytes as a JSON array of numbers, which the apiserver (Go's []byte)
/// reads as well as base64; accept both.
fn decoded_patch(response: &Value) -> json_patch::Patch {
    use base64::Engine as _;
    let bytes: Vec<u8> = match &response["patch"] {
        Value::String(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
        other => serde_json::from_value(other.clone()).unwrap(),
    };
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn operator_job_is_mutated_and_the_patch_applies() {
    let state = state(true);
    let body = fixture("executor-job-by-operator.json");
    let response = post(state.clone(), body.clone()).await;
    assert_eq!(response["uid"], "7d3f0a52-0c6b-4d5e-9b0e-3f1e6c2b9a10");
    assert_eq!(response["allowed"], true, "{response}");
    assert_eq!(response["patchType"], "JSONPatch");
    let patch = decoded_patch(&response);
    let review: Value = serde_json::from_slice(&body).unwrap();
    let mut job = review["request"]["object"].clone();
    json_patch::patch(&mut job, &patch).unwrap();
    let container = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["command"][2], crate::mutation::EXECUTOR_SCRIPT);
    assert!(
        job["metadata"]["annotations"][contract::INJECTED_ANNOTATION].is_string(),
        "{job}"
    );
    assert!(state.metrics.encode().contains("decision=\"mutated\"} 1"));
}

#[tokio::test]
async fn dry_run_gets_the_same_answer_without_side_effects() {
    let wet = post(state(true), fixture("executor-job-by-operator.json")).await;
    let dry = post(state(true), fixture("executor-job-dry-run.json")).await;
    assert_eq!(dry["allowed"], true);
    assert_eq!(dry["uid"], "8e4a1b63-1d7c-4e6f-8c1f-4a2f7d3c0b21");
    assert_eq!(dry["patch"], wet["patch"]);
}

#[tokio::test]
async fn another_user_is_denied_with_the_reason() {
    let response = post(state(true), fixture("executor-job-by-another-user.json")).await;
    assert_eq!(response["allowed"], false);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("only system:serviceaccount:kosmos-system:virtual-cluster-operator")
            && message.contains("not mallory")
            && message.contains(contract::EXECUTOR_LABEL),
        "{message}"
    );
    assert!(response.get("patch").is_none_or(Value::is_null));
}

#[tokio::test]
async fn a_job_without_the_label_is_allowed_untouched() {
    let response = post(state(false), fixture("plain-job.json")).await;
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none_or(Value::is_null));
}

#[tokio::test]
async fn an_unknown_plugin_is_denied_naming_it() {
    let response = post(state(true), fixture("executor-job-unknown-plugin.json")).await;
    assert_eq!(response["allowed"], false);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("VirtualClusterPlugin tenants/missing-plugin")
            && message.contains("not found"),
        "{message}"
    );
}

#[tokio::test]
async fn before_the_caches_sync_executor_jobs_are_refused_not_misjudged() {
    let response = post(state(false), fixture("executor-job-by-operator.json")).await;
    assert_eq!(response["allowed"], false);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(message.contains("retry shortly"), "{message}");
}

#[tokio::test]
async fn malformed_reviews_get_an_invalid_answer() {
    for name in ["malformed.json", "no-request.json"] {
        let state = state(true);
        let response = post(state.clone(), fixture(name)).await;
        assert_eq!(response["allowed"], false, "{name}");
        assert_eq!(response["status"]["reason"], "InvalidRequest", "{name}");
        assert!(state.metrics.encode().contains("decision=\"invalid\"} 1"));
    }
    let response = post(state(true), b"\xff\xfe not json".to_vec()).await;
    assert_eq!(response["allowed"], false);
}

#[tokio::test]
async fn a_second_review_of_the_mutated_job_is_unchanged() {
    let state = state(true);
    let body = fixture("executor-job-by-operator.json");
    let response = post(state.clone(), body.clone()).await;
    let mut review: Value = serde_json::from_slice(&body).unwrap();
    json_patch::patch(&mut review["request"]["object"], &decoded_patch(&response)).unwrap();
    let again = post(state.clone(), serde_json::to_vec(&review).unwrap()).await;
    assert_eq!(again["allowed"], true);
    assert!(again.get("patch").is_none_or(Value::is_null), "{again}");
    assert!(state.metrics.encode().contains("decision=\"unchanged\"} 1"));
}

/// Names of 253 characters: the labels hold hashes, the annotations the names, and the webhook
/// finds plugin and VirtualCluster by the names; a label that disagrees is denied.
#[tokio::test]
async fn long_names_are_found_through_the_annotations() {
    let long_vc = format!("tenant1-{}", "v".repeat(245));
    let long_plugin = format!("proxy-{}", "p".repeat(247));
    let (plugins, mut plugin_writer) = reflector::store();
    let (virtual_clusters, mut vc_writer) = reflector::store();
    let mut plugin = seed_plugin();
    plugin.metadata.name = Some(long_plugin.clone());
    plugin_writer.apply_watcher_event(&watcher::Event::Apply(plugin));
    let mut vc = VirtualCluster::new(&long_vc, Default::default());
    vc.metadata.namespace = Some("tenants".into());
    vc_writer.apply_watcher_event(&watcher::Event::Apply(vc));
    let state = Arc::new(AdmissionState {
        plugins: plugins.into(),
        virtual_clusters: virtual_clusters.into(),
        settings: Settings::default(),
        operator_user: OPERATOR.into(),
        metrics: Arc::new(Metrics::default()),
        synced: AtomicBool::new(true),
        mark_key: Default::default(),
    });
    let mut review: Value =
        serde_json::from_slice(&fixture("executor-job-by-operator.json")).unwrap();
    let meta = &mut review["request"]["object"]["metadata"];
    for (key, name) in [
        (contract::VIRTUAL_CLUSTER_LABEL, &long_vc),
        (contract::PLUGIN_LABEL, &long_plugin),
    ] {
        meta["labels"][key] = contract::label_value(name).into();
        meta["annotations"][key] = name.clone().into();
    }
    meta["annotations"][contract::KUBECONFIG_SECRET_ANNOTATION] =
        contract::kubeconfig_secret_name(&long_vc).into();
    let response = post(state.clone(), serde_json::to_vec(&review).unwrap()).await;
    assert_eq!(response["allowed"], true, "{response}");
    assert!(!decoded_patch(&response).0.is_empty());

    // The annotation names another plugin than the label's hash: denied.
    review["request"]["object"]["metadata"]["annotations"][contract::PLUGIN_LABEL] =
        format!("{long_plugin}x").into();
    let response = post(state, serde_json::to_vec(&review).unwrap()).await;
    assert_eq!(response["allowed"], false, "{response}");
}

fn update_review(user: &str, old: Value, new: Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "update-1",
            "kind": {"group": "batch", "version": "v1", "kind": "Job"},
            "resource": {"group": "batch", "version": "v1", "resource": "jobs"},
            "name": "j",
            "namespace": "tenants",
            "operation": "UPDATE",
            "userInfo": {"username": user},
            "oldObject": old,
            "object": new,
        }
    }))
    .unwrap()
}

fn job_meta(labels: Value, annotations: Value) -> Value {
    serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "j", "namespace": "tenants", "labels": labels, "annotations": annotations},
    })
}

#[tokio::test]
async fn only_the_operator_may_change_the_contract_by_update() {
    let plain = job_meta(serde_json::json!({"app": "x"}), serde_json::json!({}));
    // The forgery: an unlabelled Job gets the executor labels and a copied mark by a patch.
    let forged = job_meta(
        serde_json::json!({
            "app": "x",
            contract::EXECUTOR_LABEL: "true",
            contract::PLUGIN_LABEL: "apiserver-network-proxy",
        }),
        serde_json::json!({contract::INJECTED_ANNOTATION: "0123456789abcdef"}),
    );
    let response = post(
        state(true),
        update_review("mallory", plain.clone(), forged.clone()),
    )
    .await;
    assert_eq!(response["allowed"], false, "{response}");
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.contains(contract::EXECUTOR_LABEL)
            && message.contains(contract::INJECTED_ANNOTATION)
            && message.contains("not mallory"),
        "{message}"
    );
    // Taking the mark off an executor Job is a change of the contract too.
    let response = post(
        state(true),
        update_review("mallory", forged.clone(), plain.clone()),
    )
    .await;
    assert_eq!(response["allowed"], false, "{response}");
    // The operator may; anyone may change what is not the contract.
    let response = post(
        state(true),
        update_review(OPERATOR, plain.clone(), forged.clone()),
    )
    .await;
    assert_eq!(response["allowed"], true, "{response}");
    let mut relabelled = forged.clone();
    relabelled["metadata"]["labels"]["app"] = "y".into();
    let response = post(state(true), update_review("mallory", forged, relabelled)).await;
    assert_eq!(response["allowed"], true, "{response}");
    assert!(
        response.get("patch").is_none_or(Value::is_null),
        "{response}"
    );
}

fn keyed_state(key: Option<kosmos_api::mark::Key>) -> Arc<AdmissionState> {
    let base = state(true);
    let slot = crate::mark_key::MarkKey::from_secret(crate::mark_key::KeySecret {
        namespace: "kosmos-system".into(),
        name: "plugin-webhook-mark-key".into(),
    });
    slot.key.store(key.map(Arc::new));
    Arc::new(AdmissionState {
        plugins: base.plugins.clone(),
        virtual_clusters: base.virtual_clusters.clone(),
        settings: Settings::default(),
        operator_user: OPERATOR.into(),
        metrics: Arc::new(Metrics::default()),
        synced: AtomicBool::new(true),
        mark_key: Arc::new(slot),
    })
}

#[tokio::test]
async fn the_mark_is_signed_and_verifies_on_the_job_the_apiserver_stores() {
    use kosmos_api::mark;
    let bytes = [7u8; mark::KEY_BYTES];
    let response = post(
        keyed_state(Some(mark::Key::new(&bytes).unwrap())),
        fixture("executor-job-by-operator.json"),
    )
    .await;
    assert_eq!(response["allowed"], true, "{response}");
    let review: Value = serde_json::from_slice(&fixture("executor-job-by-operator.json")).unwrap();
    let mut job = review["request"]["object"].clone();
    json_patch::patch(&mut job, &decoded_patch(&response)).unwrap();
    let job: Job = serde_json::from_value(job).unwrap();
    let key = || mark::Key::new(&bytes).unwrap();
    assert_eq!(mark::verify(&[key()], &job), Ok(()));
    // Another key (another install, or a guess) does not verify it.
    let other = mark::Key::new(&[8u8; mark::KEY_BYTES]).unwrap();
    assert!(mark::verify(&[other], &job).is_err());
    // Reinvoked on its own output, the webhook changes nothing.
    let mut again: Value =
        serde_json::from_slice(&fixture("executor-job-by-operator.json")).unwrap();
    again["request"]["object"] = serde_json::to_value(&job).unwrap();
    let response = post(
        keyed_state(Some(key())),
        serde_json::to_vec(&again).unwrap(),
    )
    .await;
    assert_eq!(response["allowed"], true, "{response}");
    assert!(
        response.get("patch").is_none_or(Value::is_null),
        "{response}"
    );
}

#[tokio::test]
async fn without_its_key_the_webhook_marks_nothing() {
    let response = post(keyed_state(None), fixture("executor-job-by-operator.json")).await;
    assert_eq!(response["allowed"], false);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("no key to sign its mark with")
            && message.contains("kosmos-system/plugin-webhook-mark-key"),
        "{message}"
    );
}

/// With watched namespaces each store answers only for its own namespace: an object is found in
/// the store of the namespace the Job names, never through another namespace's store.
#[test]
fn a_cache_of_watched_namespaces_answers_per_namespace() {
    let store_with = |namespace: &str| {
        let (store, mut writer) = reflector::store::<VirtualCluster>();
        let mut vc = VirtualCluster::new("tenant1-cluster", Default::default());
        vc.metadata.namespace = Some(namespace.into());
        writer.apply_watcher_event(&watcher::Event::Apply(vc));
        store
    };
    let cache = Cache::new(vec![
        (Some("team-a".to_owned()), store_with("team-a")),
        (Some("team-b".to_owned()), store_with("team-b")),
    ]);
    for ns in ["team-a", "team-b"] {
        let found = cache.get(ns, "tenant1-cluster").unwrap();
        assert_eq!(found.metadata.namespace.as_deref(), Some(ns));
    }
    assert!(cache.get("team-c", "tenant1-cluster").is_none());
    assert!(cache.get("team-a", "other").is_none());
    // A store filled with another namespace's object (it cannot happen with per-namespace
    // watches) is not asked for a namespace it does not serve.
    let mislabelled = Cache::new(vec![(Some("team-a".to_owned()), store_with("team-b"))]);
    assert!(mislabelled.get("team-b", "tenant1-cluster").is_none());
    // One store over every namespace answers for each.
    let all: Cache<VirtualCluster> = store_with("team-b").into();
    assert!(all.get("team-b", "tenant1-cluster").is_some());
}
