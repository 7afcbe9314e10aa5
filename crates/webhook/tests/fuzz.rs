//! Fuzz targets on stable Rust (proptest): the AdmissionReview handler fed raw bytes, and fed
//! well-formed reviews of executor Jobs whose plugin and Job carry random fields; plugin
//! validation plus `mutate()` fed random plugin specs.
//!
//! Each target first replays its committed corpus (`fuzz/corpus/<target>/`, one input per file),
//! then runs random inputs for `KOSMOS_FUZZ_SECONDS` (default 5: `make test`; `make drills` runs
//! each for 600). An input that breaks a property is shrunk and written to
//! `fuzz/corpus/<target>/found-<hash>` so it can be committed as a regression.
//!
//! Properties: no panic; every review is answered within a bound; a review that parses keeps its
//! uid; a patch always applies to the object it was made for and yields a Job that the
//! apiserver's Pod validation would accept (names, references, env names, paths, no NUL);
//! mutating the mutated Job again changes nothing.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use kosmos_api::contract::{self, Action};
use kosmos_api::{
    ChartSource, HostPath, PluginRef, PluginSources, Storage, VirtualCluster, VirtualClusterPlugin,
    VirtualClusterPluginSpec, YamlSource,
};
use kosmos_webhook::admission::{self, AdmissionState};
use kosmos_webhook::metrics::Metrics;
use kosmos_webhook::{Settings, mutate_job};
use kube::runtime::{reflector, watcher};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use serde_json::{Value, json};

const OPERATOR: &str = "system:serviceaccount:kosmos-system:virtual-cluster-operator";
const NAMESPACE: &str = "tenants";
const VC: &str = "tenant1-cluster";
/// The slowest a single review may be, even for the largest input the fuzzer makes.
const REVIEW_BOUND: Duration = Duration::from_secs(2);

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

/// How long the random part of each target runs.
fn budget() -> Duration {
    let seconds = std::env::var("KOSMOS_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    Duration::from_secs(seconds)
}

/// Runs `strategy` through `check` in batches until the budget is spent; on a failure, writes
/// the shrunk input to the corpus and panics. Returns the number of inputs tried.
fn run_for<S, F>(target: &str, strategy: S, to_bytes: fn(&S::Value) -> Vec<u8>, check: F) -> u64
where
    S: Strategy,
    S::Value: std::fmt::Debug,
    F: Fn(S::Value) -> Result<(), TestCaseError>,
{
    let deadline = Instant::now() + budget();
    let batch = 64;
    let config = Config {
        cases: batch,
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..Config::default()
    };
    // A runner counts its cases once; each batch gets a fresh one seeded from this one.
    let mut seeds = TestRunner::new(config.clone());
    let mut tried = 0u64;
    while Instant::now() < deadline {
        let mut runner = TestRunner::new_with_rng(config.clone(), seeds.new_rng());
        match runner.run(&strategy, &check) {
            Ok(()) => tried += u64::from(batch),
            Err(TestError::Fail(reason, input)) => {
                let bytes = to_bytes(&input);
                let name = format!("found-{}", contract::short_hash(&[&bytes], 16));
                let path = corpus_dir(target).join(&name);
                std::fs::write(&path, &bytes).unwrap();
                panic!(
                    "{target}: {reason}\ninput (written to {}): {input:?}",
                    path.display()
                );
            }
            Err(TestError::Abort(reason)) => panic!("{target}: aborted: {reason}"),
        }
    }
    tried
}

fn seed_plugin() -> VirtualClusterPlugin {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../api/testdata/valid/apiserver-network-proxy.yaml");
    let mut p: VirtualClusterPlugin =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    p.metadata.namespace = Some(NAMESPACE.into());
    p
}

fn virtual_cluster() -> VirtualCluster {
    common::virtual_cluster(NAMESPACE, VC)
}

/// The webhook's state with `plugin` and the VirtualCluster in its caches.
fn state(plugin: VirtualClusterPlugin) -> AdmissionState {
    let (plugins, mut plugin_writer) = reflector::store();
    let (virtual_clusters, mut vc_writer) = reflector::store();
    plugin_writer.apply_watcher_event(&watcher::Event::Apply(plugin));
    vc_writer.apply_watcher_event(&watcher::Event::Apply(virtual_cluster()));
    AdmissionState {
        plugins: plugins.into(),
        virtual_clusters: virtual_clusters.into(),
        settings: Settings::default(),
        operator_user: OPERATOR.into(),
        metrics: Arc::new(Metrics::default()),
        synced: AtomicBool::new(true),
        mark_key: Default::default(),
    }
}

/// An AdmissionReview of the creation of `job` by the operator.
fn review_of(job: &Job, uid: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "batch", "version": "v1", "kind": "Job"},
            "resource": {"group": "batch", "version": "v1", "resource": "jobs"},
            "name": job.metadata.name.clone().unwrap_or_default(),
            "namespace": NAMESPACE,
            "operation": "CREATE",
            "userInfo": {"username": OPERATOR},
            "object": job,
        }
    })
}

fn is_dns_label(s: &str) -> bool {
    kosmos_api::validation::is_dns_label(s)
}

/// What the apiserver's Pod validation checks of the parts the webhook writes.
fn pod_problems(job: &Job) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(pod) = job.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else {
        return vec!["no pod template".into()];
    };
    let volumes = pod.volumes.clone().unwrap_or_default();
    let mut names = BTreeSet::new();
    for v in &volumes {
        if !is_dns_label(&v.name) {
            problems.push(format!("volume name {:?} is not a DNS label", v.name));
        }
        if !names.insert(v.name.clone()) {
            problems.push(format!("volume {} twice", v.name));
        }
        if let Some(h) = &v.host_path
            && (!h.path.starts_with('/') || h.path.contains('\0'))
        {
            problems.push(format!("hostPath {:?}", h.path));
        }
        if let Some(c) = &v.persistent_volume_claim
            && !kosmos_api::validation::is_dns_subdomain(&c.claim_name)
        {
            problems.push(format!("claim {:?}", c.claim_name));
        }
    }
    let mut containers = BTreeSet::new();
    for c in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        if !containers.insert(c.name.clone()) {
            problems.push(format!("container {} twice", c.name));
        }
        let mut paths = BTreeSet::new();
        for m in c.volume_mounts.iter().flatten() {
            if !names.contains(&m.name) {
                problems.push(format!("mount of unknown volume {}", m.name));
            }
            if !m.mount_path.starts_with('/') || m.mount_path.contains('\0') {
                problems.push(format!("mountPath {:?}", m.mount_path));
            }
            if !paths.insert(m.mount_path.clone()) {
                problems.push(format!("mountPath {} twice", m.mount_path));
            }
        }
        for e in c.env.iter().flatten() {
            let ok_name = !e.name.is_empty()
                && !e.name.starts_with(|ch: char| ch.is_ascii_digit())
                && e.name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.'));
            if !ok_name {
                problems.push(format!("env name {:?}", e.name));
            }
            if e.value.as_deref().unwrap_or_default().contains('\0') {
                problems.push(format!("env {} holds a NUL", e.name));
            }
        }
    }
    let annotations = job.metadata.annotations.clone().unwrap_or_default();
    let size: usize = annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > 256 * 1024 {
        problems.push(format!("annotations of {size} bytes"));
    }
    problems
}

/// Checks one answered review: bounded, uid kept, and any patch applies and yields a valid Job.
fn check_review(state: &AdmissionState, body: &[u8]) -> Result<Option<Job>, TestCaseError> {
    let started = Instant::now();
    let answer = admission::review(state, body);
    let took = started.elapsed();
    prop_assert!(took < REVIEW_BOUND, "review took {took:?}");
    let response = answer.response.as_ref();
    prop_assert!(response.is_some(), "no response");
    let response = response.unwrap();
    let request: Option<Value> = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("request").cloned());
    if let Some(uid) = request
        .as_ref()
        .and_then(|r| r.get("uid"))
        .and_then(Value::as_str)
        && !response.uid.is_empty()
    {
        prop_assert_eq!(&response.uid, uid);
    }
    let Some(patch) = &response.patch else {
        return Ok(None);
    };
    prop_assert!(response.allowed, "a patch on a denial");
    let patch: json_patch::Patch = serde_json::from_slice(patch)
        .map_err(|e| TestCaseError::fail(format!("patch is not a JSON patch: {e}")))?;
    let mut object = request
        .and_then(|r| r.get("object").cloned())
        .ok_or_else(|| TestCaseError::fail("a patch without an object"))?;
    // The apiserver sends a well-formed Job; what a forged review holds (a null kind, say) is
    // not the patch's to repair. The patch must still apply to it.
    let original = serde_json::from_value::<Job>(object.clone()).ok();
    json_patch::patch(&mut object, &patch)
        .map_err(|e| TestCaseError::fail(format!("the patch does not apply: {e}")))?;
    let Some(original) = original else {
        return Ok(None);
    };
    let job: Job = serde_json::from_value(object)
        .map_err(|e| TestCaseError::fail(format!("the patched object is not a Job: {e}")))?;
    // What was wrong before (a forged Job) is not the webhook's doing; it must add nothing.
    let before = pod_problems(&original);
    let added: Vec<String> = pod_problems(&job)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    prop_assert!(added.is_empty(), "the apiserver would reject: {added:?}");
    Ok(Some(job))
}

// ---------------------------------------------------------------------------------------------
// Target 1: raw bytes into the handler.

/// A byte-level edit of a corpus input.
#[derive(Clone, Debug)]
enum Edit {
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    /// Replace the JSON value at a random place with another.
    Json(usize, Value),
}

fn hostile_string() -> BoxedStrategy<String> {
    prop_oneof![
        any::<String>(),
        "[a-z0-9.-]{0,70}",
        "[ -~]{0,40}",
        Just(String::new()),
        Just("\u{0}".to_owned()),
        Just("$(touch /tmp/pwned)".to_owned()),
        Just("../../etc/passwd".to_owned()),
        Just("a".repeat(70_000)),
        Just("\u{202e}\u{fffd}\u{1f680}".to_owned()),
    ]
    .boxed()
}

fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        hostile_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

fn edit() -> BoxedStrategy<Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Edit::Remove(i, n)),
        (any::<usize>(), json_value()).prop_map(|(i, v)| Edit::Json(i, v)),
        (any::<usize>(), json_value()).prop_map(|(i, v)| Edit::Json(i, v)),
    ]
    .boxed()
}

/// Every place in a JSON value, depth first; `Json(i, v)` replaces place `i % count`.
fn replace_nth(value: &mut Value, n: &mut usize, with: &Value) -> bool {
    if *n == 0 {
        *value = with.clone();
        return true;
    }
    *n -= 1;
    match value {
        Value::Array(items) => items.iter_mut().any(|v| replace_nth(v, n, with)),
        Value::Object(map) => map.values_mut().any(|v| replace_nth(v, n, with)),
        _ => false,
    }
}

fn count_places(value: &Value) -> usize {
    1 + match value {
        Value::Array(items) => items.iter().map(count_places).sum(),
        Value::Object(map) => map.values().map(count_places).sum(),
        _ => 0,
    }
}

fn apply_edits(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for e in edits {
        match e {
            Edit::Set(i, b) if !bytes.is_empty() => {
                let i = i % bytes.len();
                bytes[i] = *b;
            }
            Edit::Insert(i, b) => {
                let i = i % (bytes.len() + 1);
                bytes.splice(i..i, b.iter().copied());
            }
            Edit::Remove(i, n) if !bytes.is_empty() => {
                let i = i % bytes.len();
                let end = (i + n).min(bytes.len());
                bytes.drain(i..end);
            }
            Edit::Json(i, with) => {
                if let Ok(mut value) = serde_json::from_slice::<Value>(&bytes) {
                    let mut n = i % count_places(&value);
                    replace_nth(&mut value, &mut n, with);
                    bytes = serde_json::to_vec(&value).unwrap();
                }
            }
            _ => {}
        }
    }
    bytes
}

/// The seed plugin's spec hash goes where the corpus says `@SPEC_HASH@`.
fn with_spec_hash(bytes: &[u8]) -> Vec<u8> {
    let hash = contract::spec_hash(&seed_plugin().spec);
    String::from_utf8_lossy(bytes)
        .replace("@SPEC_HASH@", &hash)
        .into_bytes()
}

#[test]
fn fuzz_admission_review_raw_bytes() {
    let state = state(seed_plugin());
    let seeds: Vec<Vec<u8>> = corpus("admission-raw")
        .into_iter()
        .map(|(name, bytes)| {
            let bytes = with_spec_hash(&bytes);
            if let Err(e) = check_review(&state, &bytes) {
                panic!("corpus admission-raw/{name}: {e}");
            }
            bytes
        })
        .collect();
    assert!(seeds.len() >= 10, "only {} seeds", seeds.len());
    // Whether the seed that mutates cleanly still does (the corpus is not all rejections).
    let mutated = seeds
        .iter()
        .filter(|s| matches!(check_review(&state, s), Ok(Some(_))))
        .count();
    assert!(mutated >= 1, "no corpus input is mutated");

    let n = seeds.len();
    let seeds = Arc::new(seeds);
    let from_seed = seeds.clone();
    // The value is the body itself, so a failure writes exactly what was sent.
    let strategy = prop_oneof![
        3 => (0..n, prop::collection::vec(edit(), 1..8))
            .prop_map(move |(i, edits)| apply_edits(&from_seed[i], &edits)),
        1 => prop::collection::vec(any::<u8>(), 0..2048),
    ];
    let tried = run_for(
        "admission-raw",
        strategy,
        |body| body.clone(),
        |body| check_review(&state, &body).map(|_| ()),
    );
    eprintln!("admission-raw: {n} corpus inputs, {tried} random inputs");
}

// ---------------------------------------------------------------------------------------------
// Target 2: well-formed reviews of executor Jobs; the plugin and the Job carry random fields.
// Target 3 (validation + mutate) shares the plugin generator.

fn path_like() -> BoxedStrategy<String> {
    prop_oneof![
        "/[a-z]{1,8}(/[a-z0-9.]{1,8}){0,3}",
        "/[ -~]{0,30}",
        hostile_string(),
        Just("/pv".to_owned()),
        Just("/".to_owned()),
        Just("/kosmos/work".to_owned()),
        Just("/pv/./x".to_owned()),
        Just("/pv/../..".to_owned()),
    ]
    .boxed()
}

fn pv_path() -> BoxedStrategy<String> {
    prop_oneof![
        3 => ("[a-z0-9]{1,20}", path_like()).prop_map(|(c, p)| format!("{c}:{p}")),
        1 => hostile_string(),
    ]
    .boxed()
}

fn host_path() -> BoxedStrategy<HostPath> {
    (path_like(), prop::option::of("[a-z0-9.-]{1,20}"))
        .prop_map(|(path, node_name)| HostPath { path, node_name })
        .boxed()
}

fn uri() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "https?://[a-z.]{1,20}(/[!-~]{0,20})?",
        1 => hostile_string(),
    ]
    .boxed()
}

/// Mostly one kind of storage, as a plugin author writes it; sometimes any mix.
fn storage() -> BoxedStrategy<Storage> {
    let sha = prop::option::of(prop_oneof!["[0-9a-f]{64}", hostile_string()]);
    prop_oneof![
        1 => pv_path().prop_map(|p| Storage { pv_path: Some(p), ..Storage::default() }),
        1 => host_path().prop_map(|h| Storage { host_path: Some(h), ..Storage::default() }),
        1 => (uri(), sha.clone()).prop_map(|(u, sha256)| Storage {
            uri: Some(u),
            sha256,
            ..Storage::default()
        }),
        1 => (
            prop::option::of(pv_path()),
            prop::option::of(host_path()),
            prop::option::of(uri()),
            sha,
        )
            .prop_map(|(pv_path, host_path, uri, sha256)| Storage {
                pv_path,
                host_path,
                uri,
                sha256,
            }),
    ]
    .boxed()
}

fn chart() -> BoxedStrategy<ChartSource> {
    (
        prop::option::of(prop_oneof!["[a-z][a-z0-9-]{0,20}", hostile_string()]),
        prop::option::of(prop_oneof!["(https?|oci)://[a-z.]{1,20}", hostile_string()]),
        prop::option::of(prop_oneof!["[0-9]\\.[0-9]\\.[0-9]", hostile_string()]),
        prop::option::of(storage()),
        prop::option::of(prop_oneof![
            "[a-z]{1,8}: [ -~]{0,20}\n",
            hostile_string(),
            Just("a: &a [1]\nb: [*a,*a,*a]\n".to_owned()),
        ]),
        prop::option::of(storage()),
        any::<bool>(),
        prop::option::of(prop_oneof!["[a-z0-9-]{1,60}", hostile_string()]),
        prop::option::of(prop_oneof!["[a-z0-9-]{1,20}", hostile_string()]),
    )
        .prop_map(
            |(name, repo, version, storage, values, values_file, wait, release_name, namespace)| {
                ChartSource {
                    name,
                    repo,
                    version,
                    storage,
                    values,
                    values_file,
                    wait,
                    release_name,
                    namespace,
                }
            },
        )
        .boxed()
}

fn plugin_spec() -> BoxedStrategy<VirtualClusterPluginSpec> {
    (
        prop::option::of(hostile_string()),
        prop::option::of(chart()),
        prop::option::of(
            (storage(), prop::option::of("[a-z0-9-]{1,20}"))
                .prop_map(|(path, namespace)| YamlSource { path, namespace }),
        ),
        any::<bool>(),
        prop::collection::vec(prop_oneof!["[a-z-]{1,10}", hostile_string()], 0..3),
        prop::option::of(any::<i64>()),
        prop::option::of(prop_oneof!["[a-z/:.0-9]{1,30}", hostile_string()]),
    )
        .prop_map(
            |(success_state_command, chart, yaml, enabled_by_default, deps, timeout, image)| {
                VirtualClusterPluginSpec {
                    success_state_command,
                    plugin_sources: PluginSources { chart, yaml },
                    enabled_by_default,
                    depends_on: deps.into_iter().map(PluginRef::new).collect(),
                    timeout_seconds: timeout,
                    executor_image: image,
                }
            },
        )
        .boxed()
}

fn plugin() -> BoxedStrategy<VirtualClusterPlugin> {
    (
        prop_oneof!["[a-z][a-z0-9-]{0,30}", hostile_string()],
        plugin_spec(),
    )
        .prop_map(|(name, spec)| {
            let mut p = VirtualClusterPlugin::new(&name, spec);
            p.metadata.namespace = Some(NAMESPACE.into());
            p
        })
        .boxed()
}

/// Random additions to the operator's bare Job: what another controller or an old version
/// might have put there already.
fn job_noise() -> BoxedStrategy<Value> {
    (
        prop::collection::btree_map("[a-z]{1,10}", "[a-z0-9]{0,10}", 0..3),
        // Valid volume names: the bare Job is the operator's, which the apiserver would accept.
        prop::collection::vec("[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", 0..3),
        prop::collection::vec(("[A-Z_]{1,10}", hostile_string()), 0..3),
        any::<bool>(),
        prop::option::of("[a-z0-9.-]{1,20}"),
    )
        .prop_map(|(labels, volumes, env, init, node)| {
            json!({
                "labels": labels,
                "volumes": volumes,
                "env": env,
                "init": init,
                "node": node,
            })
        })
        .boxed()
}

fn noisy_job(plugin: &VirtualClusterPlugin, action: Action, noise: &Value) -> Job {
    let mut job = serde_json::to_value(common::bare_job(NAMESPACE, VC, plugin, action)).unwrap();
    // Plugin names that are no label value still reach the webhook in a forged review.
    if let Some(labels) = noise["labels"].as_object() {
        for (k, v) in labels {
            job["metadata"]["labels"][format!("example.com/{k}")] = v.clone();
        }
    }
    let pod = &mut job["spec"]["template"]["spec"];
    let volumes: Vec<Value> = noise["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| json!({"name": n, "emptyDir": {}}))
        .collect();
    if !volumes.is_empty() {
        pod["volumes"] = Value::Array(volumes);
    }
    let env: Vec<Value> = noise["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| json!({"name": pair[0], "value": pair[1]}))
        .collect();
    if !env.is_empty() {
        pod["containers"][0]["env"] = Value::Array(env);
    }
    if noise["init"].as_bool() == Some(true) {
        pod["initContainers"] = json!([{"name": "init", "image": "busybox"}]);
    }
    if let Some(node) = noise["node"].as_str() {
        pod["nodeSelector"] = json!({"kubernetes.io/hostname": node});
    }
    serde_json::from_value(job).unwrap()
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![Just(Action::Install), Just(Action::Uninstall)]
}

/// One structured input: the plugin, the action, and the noise on the Job.
type Structured = (VirtualClusterPlugin, Action, Value);

fn structured_bytes(input: &Structured) -> Vec<u8> {
    let (plugin, action, noise) = input;
    let job = noisy_job(plugin, *action, noise);
    serde_json::to_vec_pretty(&json!({"plugin": plugin, "action": action.as_str(), "noise": noise, "review": review_of(&job, "fuzz")})).unwrap()
}

fn structured_from_bytes(bytes: &[u8]) -> Structured {
    let v: Value = serde_json::from_slice(bytes).unwrap();
    let plugin: VirtualClusterPlugin = serde_json::from_value(v["plugin"].clone()).unwrap();
    let action = Action::parse(v["action"].as_str().unwrap()).unwrap();
    (plugin, action, v["noise"].clone())
}

/// How many structured inputs were mutated (not denied): the fuzzer must reach the mutation.
static MUTATED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn check_structured((plugin, action, noise): Structured) -> Result<(), TestCaseError> {
    let job = noisy_job(&plugin, action, &noise);
    let state = state(plugin.clone());
    let body = serde_json::to_vec(&review_of(&job, "fuzz-uid")).unwrap();
    let patched = check_review(&state, &body)?;
    // The handler and the pure core agree.
    let direct = mutate_job(&job, &plugin, &virtual_cluster(), &Settings::default());
    let valid = kosmos_api::validate_plugin(&plugin).is_ok();
    prop_assert!(valid || direct.is_err(), "an invalid plugin was mutated");
    if let (Some(patched), Ok(_)) = (&patched, &direct) {
        MUTATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Idempotent: a second pass over the mutated Job changes nothing.
        let again = mutate_job(patched, &plugin, &virtual_cluster(), &Settings::default())
            .map_err(|e| TestCaseError::fail(format!("the mutated Job is refused: {e}")))?;
        prop_assert!(
            again.patch.0.is_empty(),
            "a second mutation patched {:?}",
            again.patch
        );
    }
    Ok(())
}

#[test]
fn fuzz_admission_review_structured() {
    for (name, bytes) in corpus("admission-structured") {
        if let Err(e) = check_structured(structured_from_bytes(&bytes)) {
            panic!("corpus admission-structured/{name}: {e}");
        }
    }
    let tried = run_for(
        "admission-structured",
        (plugin(), action(), job_noise()),
        structured_bytes,
        check_structured,
    );
    let mutated = MUTATED.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("admission-structured: {tried} random inputs, {mutated} of all mutated");
    assert!(mutated > 0, "no input reached the mutation");
}

fn check_validate_and_mutate(plugin: VirtualClusterPlugin) -> Result<(), TestCaseError> {
    let verdict = kosmos_api::validate_plugin(&plugin);
    if let Err(invalid) = &verdict {
        for e in &invalid.errors {
            prop_assert!(
                e.field == "metadata.name" || e.field.starts_with("spec."),
                "error names no field: {e}"
            );
        }
    }
    for action in [Action::Install, Action::Uninstall] {
        let job = common::bare_job(NAMESPACE, VC, &plugin, action);
        match mutate_job(&job, &plugin, &virtual_cluster(), &Settings::default()) {
            Ok(m) => {
                prop_assert!(verdict.is_ok(), "an invalid plugin was mutated");
                let mut value = serde_json::to_value(&job).unwrap();
                json_patch::patch(&mut value, &m.patch)
                    .map_err(|e| TestCaseError::fail(format!("the patch does not apply: {e}")))?;
                let mutated: Job = serde_json::from_value(value).unwrap();
                let problems = pod_problems(&mutated);
                prop_assert!(
                    problems.is_empty(),
                    "the apiserver would reject: {problems:?}"
                );
            }
            Err(denial) => prop_assert!(!denial.0.is_empty(), "a denial without a message"),
        }
    }
    Ok(())
}

#[test]
fn fuzz_validation_and_mutate() {
    let mut replayed = 0;
    for (name, bytes) in corpus("validation") {
        // A type error (hostPath as a plain string) is refused by deserialization already.
        let Ok(plugin) = serde_yaml::from_slice::<VirtualClusterPlugin>(&bytes) else {
            continue;
        };
        replayed += 1;
        if let Err(e) = check_validate_and_mutate(plugin) {
            panic!("corpus validation/{name}: {e}");
        }
    }
    assert!(replayed >= 60, "only {replayed} corpus plugins");
    let tried = run_for(
        "validation",
        plugin(),
        |p| serde_yaml::to_string(p).unwrap().into_bytes(),
        check_validate_and_mutate,
    );
    eprintln!("validation: {tried} random inputs");
}
