//! The admission endpoint: parses an AdmissionReview, decides who may get a mutation, looks up
//! the plugin and VirtualCluster in the watch-fed caches, calls [`mutate`] and answers. One log
//! line per review.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::post;
use base64::Engine as _;
use k8s_openapi::api::batch::v1::Job;
use kosmos_api::contract;
use kosmos_api::{VirtualCluster, VirtualClusterPlugin};
use kube::ResourceExt;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::runtime::reflector::{ObjectRef, Store};

use crate::base64_splice::{self, PreEncoded};
use crate::mark_key::MarkKey;
use crate::metrics::{Decision, Metrics};
use crate::mutation::{self, Settings, job_name, mutate, parse_job};

/// Largest AdmissionReview body read; the apiserver's own limit on an object is 3 MiB.
pub const MAX_REVIEW_BYTES: usize = 8 * 1024 * 1024;

/// Watch-fed objects of one kind: one store over every namespace, or one store per watched
/// namespace (each fed by its own watch, which a Role in that namespace allows).
pub struct Cache<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    stores: Vec<(Option<String>, Store<K>)>,
}

impl<K> Cache<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    /// A cache of the given stores, each holding the objects of its namespace (`None`: all).
    pub fn new(stores: Vec<(Option<String>, Store<K>)>) -> Self {
        Self { stores }
    }

    /// The object `namespace/name`, if a watched namespace holds it.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        let key = ObjectRef::new(name).within(namespace);
        self.stores
            .iter()
            .filter(|(ns, _)| ns.as_deref().is_none_or(|ns| ns == namespace))
            .find_map(|(_, store)| store.get(&key))
    }

    /// Resolves once every store has listed its namespace.
    pub async fn wait_until_ready(
        &self,
    ) -> Result<(), kube::runtime::reflector::store::WriterDropped> {
        for (_, store) in &self.stores {
            store.wait_until_ready().await?;
        }
        Ok(())
    }
}

impl<K> Clone for Cache<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    fn clone(&self) -> Self {
        Self {
            stores: self.stores.clone(),
        }
    }
}

impl<K> From<Store<K>> for Cache<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    /// One store over every namespace.
    fn from(store: Store<K>) -> Self {
        Self::new(vec![(None, store)])
    }
}

/// What the admission endpoint needs: caches, settings, metrics.
pub struct AdmissionState {
    /// Plugins, fed by watches.
    pub plugins: Cache<VirtualClusterPlugin>,
    /// VirtualClusters, fed by watches.
    pub virtual_clusters: Cache<VirtualCluster>,
    /// Mutation settings.
    pub settings: Settings,
    /// The only user whose executor Jobs are mutated (the operator's service account).
    pub operator_user: String,
    /// Review counters and latency.
    pub metrics: Arc<Metrics>,
    /// Set once both caches have listed everything; before that lookups could miss.
    pub synced: AtomicBool,
    /// The key marks are signed with.
    pub mark_key: Arc<MarkKey>,
}

impl AdmissionState {
    /// Whether both caches have synced.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }
}

/// The router with `POST /mutate`.
pub fn router(state: Arc<AdmissionState>) -> Router {
    Router::new()
        .route("/mutate", post(handle))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REVIEW_BYTES))
        .layer(axum::middleware::from_fn(refuse_declared_oversize))
        .with_state(state)
}

/// Answers 413 to a request whose Content-Length is over [`MAX_REVIEW_BYTES`] at once, without
/// reading a byte of its body: the body limit alone would first read up to the limit. A body
/// sent without a length is cut off at the limit by `DefaultBodyLimit`.
async fn refuse_declared_oversize(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > MAX_REVIEW_BYTES as u64 => (
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            format!("an AdmissionReview of {length} bytes is over the limit of {MAX_REVIEW_BYTES}"),
        )
            .into_response(),
        _ => next.run(request).await,
    }
}

async fn handle(State(state): State<Arc<AdmissionState>>, body: Bytes) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        answer(&state, &body),
    )
}

/// The bytes that answer one AdmissionReview body: [`review`] then [`encode`], with the base64
/// of the executor script in the patch (most of the answer) encoded once per process.
pub fn answer(state: &AdmissionState, body: &[u8]) -> Vec<u8> {
    let (review, script_at) = review_script_at(state, body);
    encode_script_at(review, script_at)
}

/// The AdmissionReview answer as bytes, with the patch as a base64 string.
///
/// kube-core writes `response.patch` (bytes) as a JSON array of numbers. The apiserver reads
/// that too, but Go's `[]byte` is base64 in JSON, and the array is almost three times larger
/// than the base64 text (a 2.4 KB review got a 37.7 KB answer), all of it written, sent and parsed on
/// every executor Job's way through the admission chain.
pub fn encode(review: AdmissionReview<DynamicObject>) -> Vec<u8> {
    encode_script_at(review, None)
}

/// The executor script as the patch carries it, base64-encoded for its three alignments.
static SCRIPT_BASE64: LazyLock<PreEncoded> =
    LazyLock::new(|| PreEncoded::new(mutation::script_json().as_bytes()));

/// [`encode`], where the patch holds the escaped executor script at `script_at`.
fn encode_script_at(
    mut review: AdmissionReview<DynamicObject>,
    script_at: Option<usize>,
) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Answer<'a> {
        #[serde(rename = "apiVersion")]
        api_version: &'a str,
        kind: &'a str,
        response: Option<Response<'a>>,
    }
    #[derive(serde::Serialize)]
    struct Response<'a> {
        #[serde(flatten)]
        rest: &'a AdmissionResponse,
        #[serde(skip_serializing_if = "Option::is_none")]
        patch: Option<String>,
    }
    let patch = review.response.as_mut().and_then(|r| r.patch.take());
    let answer = |patch| Answer {
        api_version: &review.types.api_version,
        kind: &review.types.kind,
        response: review
            .response
            .as_ref()
            .map(|rest| Response { rest, patch }),
    };
    // The base64 text is most of the answer and needs no escaping: it is appended as it is
    // (the patch is the response's last field) rather than scanned by the serializer.
    if let Ok(mut out) = serde_json::to_vec(&answer(None)) {
        let Some(patch) = &patch else {
            return out;
        };
        let len = out.len();
        if len >= 3 && out.ends_with(b"}}") && out[len - 3] != b'{' {
            out.truncate(len - 2);
            out.reserve(base64::encoded_len(patch.len(), true).unwrap_or_default() + 14);
            out.extend_from_slice(br#","patch":""#);
            match script_at {
                Some(at) => SCRIPT_BASE64.encode(patch, at, &mut out),
                None => base64_splice::push(&mut out, patch),
            }
            out.extend_from_slice(br#""}}"#);
            return out;
        }
    }
    let patch = patch.map(|bytes| base64::engine::general_purpose::STANDARD.encode(bytes));
    // Plain structs of strings, numbers and maps with string keys always serialize; the
    // fallback is only there so this can never panic.
    serde_json::to_vec(&answer(patch)).unwrap_or_else(|e| {
        serde_json::to_vec(&serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {"uid": "", "allowed": false, "status": {"message": e.to_string()}},
        }))
        .unwrap_or_default()
    })
}

/// The facts of one review, for its log line.
#[derive(Default)]
struct Facts {
    uid: String,
    job: String,
    plugin: String,
    virtual_cluster: String,
    user: String,
    dry_run: bool,
    patch_ops: usize,
    message: String,
    /// Where the executor script starts in the patch.
    script_at: Option<usize>,
}

/// Answers one AdmissionReview body. Never panics on input.
pub fn review(state: &AdmissionState, body: &[u8]) -> AdmissionReview<DynamicObject> {
    review_script_at(state, body).0
}

/// [`review`], and where the executor script starts in the patch.
fn review_script_at(
    state: &AdmissionState,
    body: &[u8],
) -> (AdmissionReview<DynamicObject>, Option<usize>) {
    let started = Instant::now();
    let mut facts = Facts::default();
    let (decision, response) = decide(state, body, &mut facts);
    let latency = started.elapsed();
    state.metrics.review(decision, latency.as_secs_f64());
    tracing::info!(
        uid = %facts.uid,
        job = %facts.job,
        plugin = %facts.plugin,
        virtualcluster = %facts.virtual_cluster,
        user = %facts.user,
        dry_run = facts.dry_run,
        decision = decision.as_str(),
        patch_ops = facts.patch_ops,
        latency_ms = latency.as_secs_f64() * 1000.0,
        detail = %facts.message,
        "admission review"
    );
    if let Some(patch) = &response.patch {
        tracing::debug!(uid = %facts.uid, patch = %String::from_utf8_lossy(patch), "patch");
    }
    (response.into_review(), facts.script_at)
}

/// The object of a review, typed as a Job (the registration sends only Jobs, so a review
/// parses straight into one) or dynamic (anything else: a review the typed parse refused is
/// parsed again as it was before, so its answer does not change).
trait ReviewObject: kube::Resource + serde::de::DeserializeOwned {
    /// The object as a Job.
    fn into_job(self) -> Result<Job, serde_json::Error>;
}

impl ReviewObject for Job {
    fn into_job(self) -> Result<Job, serde_json::Error> {
        Ok(self)
    }
}

impl ReviewObject for DynamicObject {
    fn into_job(self) -> Result<Job, serde_json::Error> {
        serde_json::to_value(self).and_then(serde_json::from_value)
    }
}

fn invalid(facts: &mut Facts, message: String) -> (Decision, AdmissionResponse) {
    facts.message = message.clone();
    (Decision::Invalid, AdmissionResponse::invalid(message))
}

fn decide(state: &AdmissionState, body: &[u8], facts: &mut Facts) -> (Decision, AdmissionResponse) {
    // JSON is UTF-8 (RFC 8259). Checked up front: the typed parse below skips the fields a Job
    // does not have without looking at their bytes, so a body that is not JSON could otherwise
    // be admitted (the fuzzer found one with a stray byte in an unknown metadata field).
    let Ok(body) = std::str::from_utf8(body) else {
        return invalid(
            facts,
            "malformed AdmissionReview: the body is not UTF-8".to_owned(),
        );
    };
    // Parsing into a `DynamicObject` built a JSON tree of the Job, then a second one to make the
    // Job from: a sixth of a review's time.
    if let Ok(review) = serde_json::from_str::<AdmissionReview<Job>>(body) {
        return decide_review(state, review, facts);
    }
    match serde_json::from_str::<AdmissionReview<DynamicObject>>(body) {
        Ok(review) => decide_review(state, review, facts),
        Err(e) => invalid(facts, format!("malformed AdmissionReview: {e}")),
    }
}

fn decide_review<K: ReviewObject>(
    state: &AdmissionState,
    review: AdmissionReview<K>,
    facts: &mut Facts,
) -> (Decision, AdmissionResponse) {
    let mut request: AdmissionRequest<K> = match review.try_into() {
        Ok(request) => request,
        Err(_) => return invalid(facts, "AdmissionReview has no request".to_owned()),
    };
    facts.uid = request.uid.clone();
    facts.user = request.user_info.username.clone().unwrap_or_default();
    facts.dry_run = request.dry_run;
    let namespace = request.namespace.clone().unwrap_or_default();
    facts.job = format!("{namespace}/{}", request.name);
    let response = AdmissionResponse::from(&request);

    let is_job = request.kind.group == "batch" && request.kind.kind == "Job";
    if is_job && request.operation == Operation::Update {
        return update(state, &request, response, facts);
    }
    if !is_job || request.operation != Operation::Create {
        facts.message = "not the creation of a Job".to_owned();
        return (Decision::Ignored, response);
    }
    let Some(object) = request.object.take() else {
        return invalid(
            facts,
            "AdmissionReview for a Job create carries no object".to_owned(),
        );
    };
    let job: Job = match object.into_job() {
        Ok(job) => job,
        Err(e) => return invalid(facts, format!("the object is not a batch/v1 Job: {e}")),
    };
    facts.job = format!("{namespace}/{}", job_name(&job));
    if !job.labels().contains_key(contract::EXECUTOR_LABEL) {
        facts.message = "no executor label".to_owned();
        return (Decision::Ignored, response);
    }
    // Parsed once here; a Job that breaks the contract is denied after the checks below, which
    // concern anyone creating executor Jobs.
    let id = parse_job(&job);
    if let Ok(id) = &id {
        facts.plugin.clone_from(&id.plugin);
        facts.virtual_cluster.clone_from(&id.virtual_cluster);
    }
    let deny = |facts: &mut Facts, response: AdmissionResponse, message: String| {
        facts.message = message.clone();
        (Decision::Denied, response.deny(message))
    };
    if facts.user != state.operator_user {
        let message = format!(
            "Job {}: only {} may create Jobs labelled {}, not {}; such Jobs receive the \
             plugin's volumes and the virtual cluster's kubeconfig",
            facts.job,
            state.operator_user,
            contract::EXECUTOR_LABEL,
            if facts.user.is_empty() {
                "an anonymous user"
            } else {
                &facts.user
            },
        );
        return deny(facts, response, message);
    }
    if !state.is_synced() {
        let message = format!(
            "Job {}: the plugin webhook has not finished loading plugins and VirtualClusters; \
             retry shortly",
            facts.job
        );
        return deny(facts, response, message);
    }
    let id = match id {
        Ok(id) => id,
        Err(denial) => return deny(facts, response, denial.0),
    };
    let Some(plugin) = state.plugins.get(&namespace, &id.plugin) else {
        let message = format!(
            "Job {}: VirtualClusterPlugin {namespace}/{} (label {}) not found",
            facts.job,
            id.plugin,
            contract::PLUGIN_LABEL
        );
        return deny(facts, response, message);
    };
    let Some(virtual_cluster) = state.virtual_clusters.get(&namespace, &id.virtual_cluster) else {
        let message = format!(
            "Job {}: VirtualCluster {namespace}/{} (label {}) not found",
            facts.job,
            id.virtual_cluster,
            contract::VIRTUAL_CLUSTER_LABEL
        );
        return deny(facts, response, message);
    };
    let key = state.mark_key.key.load_full();
    if key.is_none()
        && let Some(secret) = &state.mark_key.secret
    {
        let message = format!(
            "Job {}: the plugin webhook has no key to sign its mark with yet (Secret {secret}); \
             retry shortly",
            facts.job
        );
        return deny(facts, response, message);
    }
    let keyed;
    let settings = match key {
        Some(key) => {
            keyed = Settings {
                mark_key: Some(key),
                ..state.settings.clone()
            };
            &keyed
        }
        None => &state.settings,
    };
    match mutate(&job, &id, &plugin, &virtual_cluster, settings) {
        Ok(mutation) if mutation.patch.0.is_empty() => {
            facts.message = format!("already injected ({})", mutation.mark);
            (Decision::Unchanged, response)
        }
        Ok(mutation) => {
            facts.patch_ops = mutation.patch.0.len();
            facts.message = format!("{} injected ({})", mutation.action, mutation.mark);
            // `with_patch` of an empty patch sets the patch type (a private field); the bytes
            // come from `patch_json`, which writes the executor script without escaping it
            // again for every review.
            let patched = mutation
                .patch_json_script_at()
                .map_err(|e| e.to_string())
                .and_then(|(json, script_at)| {
                    facts.script_at = script_at;
                    let mut response = response
                        .clone()
                        .with_patch(json_patch::Patch(Vec::new()))
                        .map_err(|e| e.to_string())?;
                    response.patch = Some(json);
                    Ok(response)
                });
            match patched {
                Ok(response) => (Decision::Mutated, response),
                Err(e) => {
                    let message = format!("Job {}: cannot serialize the patch: {e}", facts.job);
                    deny(facts, response, message)
                }
            }
        }
        Err(denial) => deny(facts, response, denial.0),
    }
}

/// The labels and annotations of the contract: on a Job, only the operator may set or change
/// them after its creation, so nobody turns a Job the webhook never mutated into one the
/// operator counts (by adding the executor label and a copied mark with a patch).
const CONTRACT_LABELS: [&str; 4] = [
    contract::EXECUTOR_LABEL,
    contract::VIRTUAL_CLUSTER_LABEL,
    contract::PLUGIN_LABEL,
    contract::ACTION_LABEL,
];
/// See [`CONTRACT_LABELS`].
const CONTRACT_ANNOTATIONS: [&str; 4] = [
    contract::SPEC_HASH_ANNOTATION,
    contract::ATTEMPT_ANNOTATION,
    contract::KUBECONFIG_SECRET_ANNOTATION,
    contract::INJECTED_ANNOTATION,
];

/// An update of a Job: allowed unless someone other than the operator changes a label or
/// annotation of the contract. (The webhook is registered for UPDATE with an objectSelector on
/// the executor label, which matches the old or the new object.)
fn update<K: ReviewObject>(
    state: &AdmissionState,
    request: &AdmissionRequest<K>,
    response: AdmissionResponse,
    facts: &mut Facts,
) -> (Decision, AdmissionResponse) {
    let metadata = |object: Option<&K>| {
        object.map(|o| (o.meta().labels.clone(), o.meta().annotations.clone()))
    };
    let (old_labels, old_annotations) = metadata(request.old_object.as_ref()).unwrap_or_default();
    let (new_labels, new_annotations) = metadata(request.object.as_ref()).unwrap_or_default();
    let (old_labels, new_labels) = (
        old_labels.unwrap_or_default(),
        new_labels.unwrap_or_default(),
    );
    let (old_annotations, new_annotations) = (
        old_annotations.unwrap_or_default(),
        new_annotations.unwrap_or_default(),
    );
    let changed: Vec<&str> = CONTRACT_LABELS
        .iter()
        .filter(|k| old_labels.get(**k) != new_labels.get(**k))
        .chain(
            // Long names live in annotations under the label's key (contract::name_in).
            CONTRACT_ANNOTATIONS
                .iter()
                .chain(CONTRACT_LABELS.iter())
                .filter(|k| old_annotations.get(**k) != new_annotations.get(**k)),
        )
        .copied()
        .collect();
    if changed.is_empty() || facts.user == state.operator_user {
        facts.message = if changed.is_empty() {
            "an update that leaves the contract alone".to_owned()
        } else {
            format!("the operator changed {}", changed.join(", "))
        };
        return (Decision::Ignored, response);
    }
    let message = format!(
        "Job {}: only the operator may change {} after the Job is created, not {}",
        facts.job,
        changed.join(", "),
        if facts.user.is_empty() {
            "an anonymous user"
        } else {
            &facts.user
        },
    );
    facts.message = message.clone();
    (Decision::Denied, response.deny(message))
}

#[cfg(test)]
mod tests;
