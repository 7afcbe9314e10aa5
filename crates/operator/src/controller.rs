//! The reconciler: observes one VirtualCluster (fresh from the API, so a restart or a stale
//! cache never leads to a second Job), asks [`plan`](crate::plan) what to do, does it, and
//! writes the status by server-side apply.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use k8s_openapi::api::events;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kosmos_api::contract::{self, ExecutorJobId};
use kosmos_api::kubeconfig::SafeKubeconfig;
use kosmos_api::{VirtualCluster, VirtualClusterPlugin, VirtualClusterStatus, phase};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::jobs;
use crate::metrics::Metrics;
use crate::plan::{self, Deletion, JobView, Kubeconfig, NoteKind, Observed, Plan, Readiness, Step};

/// How the operator learns that a VirtualCluster is ready for plugins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadinessMode {
    /// Another controller (Kosmos) sets `AllNodeReady`.
    External,
    /// The operator checks the virtual cluster itself and sets `AllNodeReady`.
    Builtin,
}

/// Settings of the reconciler.
#[derive(Clone, Debug)]
pub struct Config {
    /// Decision settings.
    pub plan: plan::Settings,
    /// Executor image for plugins that name none.
    pub executor_image: String,
    /// Pull secrets and resources of every executor pod.
    pub executor_pod: jobs::ExecutorPod,
    /// How `AllNodeReady` is reached.
    pub readiness: ReadinessMode,
    /// Uninstall plugins when a VirtualCluster is deleted (the annotation overrides it).
    pub uninstall_on_delete: bool,
    /// Bound on waiting for uninstall Jobs when a VirtualCluster is deleted.
    pub uninstall_timeout: Duration,
    /// Watch only this namespace (all when None).
    pub namespace: Option<String>,
}

/// What every reconciliation shares.
pub struct Context {
    /// Client of the host cluster.
    pub client: Client,
    /// Names this operator (and replica) on the events it publishes.
    pub reporter: Reporter,
    /// Metrics for the admin port.
    pub metrics: Arc<Metrics>,
    /// Settings.
    pub config: Config,
    /// Builtin readiness probes, run beside the reconciler.
    pub probes: Arc<Probes>,
}

/// Why a reconciliation failed; `reason` labels the error metric.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was attempted, naming the object.
        what: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// The object was changed by someone else between read and write; read again.
    #[error("{0} changed while being reconciled; retrying")]
    Conflict(String),
    /// The operator built a request it cannot send (a bug: please report it).
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Label for the error metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Kube { .. } => "kube_api",
            Self::Conflict(_) => "conflict",
            Self::Internal(_) => "internal",
        }
    }
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| match &source {
        kube::Error::Api(s) if s.code == 409 => Error::Conflict(what),
        _ => Error::Kube { what, source },
    }
}

fn is_status(err: &kube::Error, code: u16) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == code)
}

/// Look again this often even when nothing happens (missed watch events, readiness polling).
const RESYNC: Duration = Duration::from_secs(300);
/// Poll interval while waiting for readiness or a kubeconfig, which no watch announces.
const POLL: Duration = Duration::from_secs(10);

/// Runs the controller until `shutdown` resolves. `ready` turns true once it watches.
pub async fn run(
    ctx: Arc<Context>,
    ready: Arc<AtomicBool>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let (vcs, plugins, jobs): (Api<VirtualCluster>, Api<VirtualClusterPlugin>, Api<Job>) =
        match &ctx.config.namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client.clone()),
            ),
        };
    let controller = Controller::new(vcs, watcher::Config::default());
    let store = controller.store();
    let executor_jobs = watcher::Config::default().labels(contract::EXECUTOR_SELECTOR);
    ready.store(true, Ordering::SeqCst);
    controller
        .owns(jobs, executor_jobs)
        // A plugin change may concern any VirtualCluster of its namespace (defaults included).
        .watches(
            plugins,
            watcher::Config::default(),
            move |plugin: VirtualClusterPlugin| {
                let ns = plugin.namespace();
                store
                    .state()
                    .into_iter()
                    .filter(|vc| vc.namespace() == ns)
                    .map(|vc| ObjectRef::from_obj(&*vc))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(error) = result {
                debug!(%error, "reconcile did not finish");
            }
        })
        .await;
}

fn error_policy(vc: Arc<VirtualCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(error.reason());
    warn!(
        virtualcluster = %format!("{}/{}", vc.namespace().unwrap_or_default(), vc.name_any()),
        reason = error.reason(),
        %error,
        "reconcile failed"
    );
    match error {
        Error::Conflict(_) => Action::requeue(Duration::from_secs(1)),
        Error::Kube { .. } | Error::Internal(_) => Action::requeue(Duration::from_secs(10)),
    }
}

async fn reconcile(vc: Arc<VirtualCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = vc.namespace().unwrap_or_default();
    let name = vc.name_any();
    let span = info_span!("reconcile", virtualcluster = %format!("{ns}/{name}"));
    ctx.metrics.reconciled();
    reconcile_one(&ns, &name, &ctx).instrument(span).await
}

/// Seconds resolution, as the API stores times: a status computed twice from the same state
/// compares equal to what was written.
fn now() -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now())
}

async fn reconcile_one(ns: &str, name: &str, ctx: &Context) -> Result<Action, Error> {
    let client = ctx.client.clone();
    let vcs: Api<VirtualCluster> = Api::namespaced(client.clone(), ns);
    // Fresh, not from the cache: decisions about Jobs must not rest on stale state.
    let Some(vc) = vcs
        .get_opt(name)
        .await
        .map_err(kube_err(format!("reading virtualcluster {ns}/{name}")))?
    else {
        ctx.metrics.jobs_running(&format!("{ns}/{name}"), 0);
        ctx.probes.forget(&format!("{ns}/{name}"));
        return Ok(Action::await_change());
    };
    let has_finalizer = vc.finalizers().iter().any(|f| f == contract::FINALIZER);
    let deletion = match &vc.metadata.deletion_timestamp {
        Some(since) => {
            if !has_finalizer {
                return Ok(Action::await_change());
            }
            let annotation = vc
                .annotations()
                .get(contract::UNINSTALL_ON_DELETE_ANNOTATION)
                .map(|v| v == "true");
            let timeout = i64::try_from(ctx.config.uninstall_timeout.as_secs()).unwrap_or(i64::MAX);
            Some(Deletion {
                uninstall: annotation.unwrap_or(ctx.config.uninstall_on_delete),
                deadline_passed: now().as_second() >= since.0.as_second().saturating_add(timeout),
            })
        }
        None => {
            if !has_finalizer {
                add_finalizer(&vcs, &vc).await?;
                // The patch wakes us again with the finalizer in place.
                return Ok(Action::await_change());
            }
            None
        }
    };

    let (kubeconfig, safe_kubeconfig) = match ensure_kubeconfig(ctx, &vc).await {
        Ok(found) => found,
        // Deletion must always finish: a namespace being torn down refuses to (re)create the
        // kubeconfig Secret, and that must not hold the finalizer forever.
        Err(e) if deletion.is_some() => (Kubeconfig::Missing(e.to_string()), None),
        Err(e) => return Err(e),
    };
    let readiness = match (ctx.config.readiness, &deletion) {
        (ReadinessMode::External, _) | (_, Some(_)) => Readiness::External,
        (ReadinessMode::Builtin, None) => check_readiness(ctx, &vc, safe_kubeconfig.as_ref()),
    };
    let plugins: Vec<VirtualClusterPlugin> =
        Api::<VirtualClusterPlugin>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await
            .map_err(kube_err(format!("listing virtualclusterplugins in {ns}")))?
            .items;
    let jobs_api: Api<Job> = Api::namespaced(client.clone(), ns);
    let mut views = observe_jobs(ctx, ns, name, &vc).await?;

    // Plan, act, fold what the API answered into the observation, plan again: a created Job
    // that lacks the webhook's mark is deleted in the same pass, and the status written
    // reflects what exists.
    let mut notes = Vec::new();
    let mut installed = Vec::new();
    let mut last: Option<Plan> = None;
    let mut rejected: Vec<(String, String)> = Vec::new();
    let mut webhook_unavailable: Option<String> = None;
    for _ in 0..4 {
        let obs = Observed {
            vc: &vc,
            plugins: &plugins,
            jobs: &views,
            kubeconfig: kubeconfig.clone(),
            readiness: readiness.clone(),
            deletion: deletion.clone(),
            rejected: &rejected,
            webhook_unavailable: webhook_unavailable.clone(),
            now: now(),
        };
        let plan = plan::plan(&obs, &ctx.config.plan);
        for note in &plan.notes {
            if !notes.contains(note) {
                notes.push(note.clone());
            }
        }
        // Each pass compares against the same old status, so only the last pass counts.
        installed.clone_from(&plan.installed);
        let steps = plan.steps.clone();
        last = Some(plan);
        if steps.is_empty() {
            break;
        }
        for step in steps {
            match step {
                Step::CreateJob(new) => {
                    let job = jobs::with_executor_pod(
                        jobs::bare_job(&vc, &new, &ctx.config.executor_image),
                        &ctx.config.executor_pod,
                    );
                    let job_name = new.name();
                    let stored = match create_job(&jobs_api, &job, &job_name).await {
                        Ok(stored) => stored,
                        Err(Error::Kube {
                            source: kube::Error::Api(status),
                            ..
                        }) if webhook_not_called(&status) => {
                            warn!(plugin = %new.id.plugin, job = %job_name, code = status.code,
                                message = %status.message, "the API server could not call the webhook for the executor job");
                            webhook_unavailable = Some(status.message.clone());
                            rejected.push((new.id.plugin.clone(), status.message.clone()));
                            continue;
                        }
                        Err(Error::Kube {
                            source: kube::Error::Api(status),
                            ..
                        }) if (400..500).contains(&status.code) && status.code != 409 => {
                            warn!(plugin = %new.id.plugin, job = %job_name, code = status.code,
                                message = %status.message, "the API server refused the executor job");
                            rejected.push((new.id.plugin.clone(), status.message.clone()));
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    let ours = stored
                        .owner_references()
                        .iter()
                        .any(|o| Some(&o.uid) == vc.metadata.uid.as_ref());
                    if !ours {
                        // Left by an earlier VirtualCluster of the same name; the garbage
                        // collector removes it, then the name is free.
                        return Err(Error::Conflict(format!(
                            "job {ns}/{job_name} of an earlier virtualcluster {name}"
                        )));
                    }
                    info!(plugin = %new.id.plugin, job = %job_name, action = %new.id.action, attempt = new.id.attempt,
                        injected = stored.annotations().contains_key(contract::INJECTED_ANNOTATION),
                        "executor job created");
                    if let Some(view) = jobs::job_view(&stored, None) {
                        views.retain(|v| v.name != view.name);
                        views.push(view);
                    }
                }
                Step::DeleteJob { name: job, why } => {
                    info!(job = %job, why = %why, "deleting executor job");
                    match jobs_api
                        .delete(
                            &job,
                            &DeleteParams {
                                propagation_policy: Some(PropagationPolicy::Background),
                                ..DeleteParams::default()
                            },
                        )
                        .await
                    {
                        Ok(_) => {}
                        Err(e) if is_status(&e, 404) => {}
                        Err(e) => return Err(kube_err(format!("deleting job {ns}/{job}"))(e)),
                    }
                    for v in views.iter_mut().filter(|v| v.name == job) {
                        v.deleting = true;
                    }
                }
            }
        }
    }
    let Some(plan) = last else {
        return Ok(Action::requeue(RESYNC));
    };

    let running = views
        .iter()
        .filter(|v| !v.deleting && v.outcome == plan::JobOutcome::Running)
        .count();
    ctx.metrics
        .jobs_running(&format!("{ns}/{name}"), i64::try_from(running).unwrap_or(0));
    for (_, took) in &installed {
        ctx.metrics.installed(*took);
    }

    write_status(&vcs, &vc, &plan.status).await?;
    publish(ctx, &vc, &notes).await;

    if deletion.is_some() {
        if plan.cleanup_done {
            remove_finalizer(&vcs, &vc).await?;
            info!("cleanup finished; finalizer removed");
            return Ok(Action::await_change());
        }
        return Ok(Action::requeue(
            plan.requeue_after
                .unwrap_or(POLL)
                .min(Duration::from_secs(5)),
        ));
    }
    let waiting_outside =
        kubeconfig != Kubeconfig::Available || matches!(readiness, Readiness::NotReady(_));
    let mut after = plan.requeue_after.unwrap_or(RESYNC);
    if waiting_outside {
        after = after.min(POLL);
    }
    if readiness == Readiness::NotReady(PROBING.to_owned()) {
        // A probe runs beside us; look at its answer soon.
        after = after.min(PROBE_POLL);
    }
    Ok(Action::requeue(after))
}

/// Whether the API server refused a request because it could not call an admission webhook
/// (not running, unreachable, too slow, or answering garbage): a 5xx whose message is the API
/// server's "failed calling webhook". A webhook that answered and denied is a 4xx instead.
fn webhook_not_called(status: &kube::core::Status) -> bool {
    status.code >= 500 && status.message.contains("failed calling webhook")
}

/// Creates a Job; AlreadyExists means an earlier pass (or replica) created it: read that one.
async fn create_job(api: &Api<Job>, job: &Job, name: &str) -> Result<Job, Error> {
    let params = PostParams {
        field_manager: Some(contract::OPERATOR_FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    match api.create(&params, job).await {
        Ok(job) => Ok(job),
        Err(e) if is_status(&e, 409) => api
            .get(name)
            .await
            .map_err(kube_err(format!("reading existing job {name}"))),
        Err(e) => Err(Error::Kube {
            what: format!("creating job {name}"),
            source: e,
        }),
    }
}

/// The executor Jobs of the VirtualCluster, fresh from the API, with the termination message of
/// failed ones. Jobs of an older VirtualCluster of the same name (another uid) are not ours.
async fn observe_jobs(
    ctx: &Context,
    ns: &str,
    name: &str,
    vc: &VirtualCluster,
) -> Result<Vec<JobView>, Error> {
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let list = jobs_api
        .list(&ListParams::default().labels(&ExecutorJobId::selector(name)))
        .await
        .map_err(kube_err(format!("listing executor jobs in {ns}")))?;
    let uid = vc.uid();
    let mut views = Vec::new();
    for job in list.items {
        let owned = job
            .owner_references()
            .iter()
            .any(|o| Some(&o.uid) == uid.as_ref());
        if !owned {
            continue;
        }
        let message = if jobs::has_failed(&job) {
            let pods = pods_api
                .list(
                    &ListParams::default()
                        .labels(&format!("batch.kubernetes.io/job-name={}", job.name_any())),
                )
                .await
                .map_err(kube_err(format!(
                    "listing pods of job {ns}/{}",
                    job.name_any()
                )))?;
            jobs::termination_message(&pods.items)
        } else {
            None
        };
        if let Some(view) = jobs::job_view(&job, message) {
            views.push(view);
        }
    }
    Ok(views)
}

/// Finds the virtual cluster's kubeconfig, checks that it is data and not code
/// ([`kosmos_api::kubeconfig::check`]), and keeps the checked copy in the operator's Secret for
/// executor Jobs. A refused kubeconfig removes that Secret, so no Job mounts an older copy.
/// Never logs it.
async fn ensure_kubeconfig(
    ctx: &Context,
    vc: &VirtualCluster,
) -> Result<(Kubeconfig, Option<SafeKubeconfig>), Error> {
    let ns = vc.namespace().unwrap_or_default();
    let name = vc.name_any();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let admin = contract::kosmos_admin_secret_name(&name);
    let (source, found): (String, Result<Vec<u8>, String>) = match decode_spec_kubeconfig(
        vc.spec.kubeconfig.as_deref(),
    ) {
        Some(decoded) => ("spec.kubeconfig".to_owned(), decoded),
        None => {
            let secret = secrets
                .get_opt(&admin)
                .await
                .map_err(kube_err(format!("reading secret {ns}/{admin}")))?;
            let found = secret
                    .and_then(|s| s.data)
                    .and_then(|d| d.get(contract::KUBECONFIG_SECRET_KEY).cloned())
                    .map(|b| b.0)
                    .ok_or_else(|| {
                        format!(
                            "neither spec.kubeconfig nor secret {ns}/{admin} (key {}) holds the virtual cluster's kubeconfig",
                            contract::KUBECONFIG_SECRET_KEY
                        )
                    });
            (
                format!(
                    "secret {ns}/{admin} (key {})",
                    contract::KUBECONFIG_SECRET_KEY
                ),
                found,
            )
        }
    };
    let bytes = match found {
        Ok(b) if !b.is_empty() => b,
        Ok(_) => return Ok((Kubeconfig::Missing("the kubeconfig is empty".into()), None)),
        Err(why) => return Ok((Kubeconfig::Missing(why), None)),
    };
    let target = contract::kubeconfig_secret_name(&name);
    let safe = match kosmos_api::kubeconfig::check(&bytes) {
        Ok(safe) => safe,
        Err(refused) => {
            let why = format!("the kubeconfig in {source} is refused: {refused}");
            // Best effort: without a usable kubeconfig no Job is created anyway, and the
            // condition says why; a missing `delete` right must not stop that from being said.
            match secrets.delete(&target, &DeleteParams::default()).await {
                Ok(_) => {
                    info!(secret = %target, "kubeconfig secret for executor jobs removed: {why}")
                }
                Err(e) if is_status(&e, 404) => {}
                Err(error) => {
                    warn!(secret = %target, %error, "could not remove the kubeconfig secret for executor jobs")
                }
            }
            return Ok((Kubeconfig::Refused(why), None));
        }
    };
    // The executor reads what was checked, not what was written: see SafeKubeconfig::to_yaml.
    let bytes = safe.to_yaml().into_bytes();
    let current = secrets
        .get_opt(&target)
        .await
        .map_err(kube_err(format!("reading secret {ns}/{target}")))?;
    let up_to_date = current
        .as_ref()
        .and_then(|s| s.data.as_ref())
        .and_then(|d| d.get(contract::KUBECONFIG_SECRET_KEY))
        .is_some_and(|b| b.0 == bytes);
    if !up_to_date {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(target.clone()),
                namespace: Some(ns.clone()),
                labels: Some(BTreeMap::from([(
                    contract::VIRTUAL_CLUSTER_LABEL.to_owned(),
                    contract::label_value(&name),
                )])),
                owner_references: jobs::owner_reference(vc).map(|o| vec![o]),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(
                contract::KUBECONFIG_SECRET_KEY.to_owned(),
                ByteString(bytes),
            )])),
            type_: Some("Opaque".into()),
            ..Secret::default()
        };
        let mut body = serde_json::to_value(&secret).unwrap_or_default();
        body["apiVersion"] = json!("v1");
        body["kind"] = json!("Secret");
        secrets
            .patch(
                &target,
                &PatchParams::apply(contract::OPERATOR_FIELD_MANAGER).force(),
                &Patch::Apply(body),
            )
            .await
            .map_err(kube_err(format!("applying secret {ns}/{target}")))?;
        info!(secret = %target, "kubeconfig secret for executor jobs updated");
    }
    Ok((Kubeconfig::Available, Some(safe)))
}

/// The kubeconfig from `spec.kubeconfig` (base64, possibly wrapped over lines), None when the
/// field is empty, or why it cannot be read. The error never contains the value.
pub fn decode_spec_kubeconfig(field: Option<&str>) -> Option<Result<Vec<u8>, String>> {
    let text = field.map(str::trim).filter(|t| !t.is_empty())?;
    Some(
        base64::engine::general_purpose::STANDARD
            .decode(text.replace(['\n', '\r', ' ', '\t'], ""))
            .map_err(|_| {
                "spec.kubeconfig is not valid base64 (Kosmos writes it base64-encoded)".to_owned()
            }),
    )
}

/// What [`Readiness::NotReady`] says while the first probe of a kubeconfig runs.
const PROBING: &str = "probing the virtual API";
/// Bound on one probe, client construction included: a virtual API that is gone or slow must
/// not keep a probe (or the operator's memory of it) forever.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);
/// How soon the reconciler looks again while a probe runs.
const PROBE_POLL: Duration = Duration::from_secs(2);

/// Builtin readiness probes, one per VirtualCluster, run as tasks beside the reconciler: a
/// reconciliation never waits on a virtual API, it reads the last answer and starts the next
/// probe when that answer is older than [`POLL`].
pub struct Probes {
    state: std::sync::Mutex<BTreeMap<String, ProbeState>>,
    /// Bound on one probe ([`PROBE_TIMEOUT`]).
    timeout: Duration,
}

impl Default for Probes {
    fn default() -> Self {
        Self {
            state: std::sync::Mutex::default(),
            timeout: PROBE_TIMEOUT,
        }
    }
}

struct ProbeState {
    /// What was probed: the VirtualCluster's uid, the checked kubeconfig and the nodes.
    key: String,
    /// The last answer and when it came.
    answer: Option<(Readiness, std::time::Instant)>,
    /// A probe task is running.
    running: bool,
}

impl Probes {
    /// The last answer for `id`'s `key`; starts a probe (`run`) when there is none running and
    /// the answer is missing or older than [`POLL`].
    fn answer<F>(self: &Arc<Self>, id: String, key: String, run: F) -> Readiness
    where
        F: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        let Ok(mut state) = self.state.lock() else {
            return Readiness::NotReady("the readiness probe state is poisoned".into());
        };
        let entry = state.entry(id.clone()).or_insert_with(|| ProbeState {
            key: key.clone(),
            answer: None,
            running: false,
        });
        if entry.key != key {
            // Another kubeconfig or node list: an earlier answer says nothing about it.
            entry.key = key.clone();
            entry.answer = None;
        }
        let stale = entry
            .answer
            .as_ref()
            .is_none_or(|(_, at)| at.elapsed() >= POLL);
        if stale && !entry.running {
            entry.running = true;
            let probes = Arc::clone(self);
            let timeout = self.timeout;
            tokio::spawn(async move {
                let readiness = match tokio::time::timeout(timeout, run).await {
                    Ok(Ok(())) => Readiness::Ready,
                    Ok(Err(why)) => Readiness::NotReady(why),
                    Err(_) => Readiness::NotReady(format!(
                        "the virtual API did not answer within {timeout:?}"
                    )),
                };
                if let Ok(mut state) = probes.state.lock()
                    && let Some(entry) = state.get_mut(&id)
                {
                    entry.running = false;
                    // An answer for a kubeconfig that changed meanwhile is dropped.
                    if entry.key == key {
                        entry.answer = Some((readiness, std::time::Instant::now()));
                    }
                }
            });
        }
        entry
            .answer
            .as_ref()
            .map_or_else(|| Readiness::NotReady(PROBING.into()), |(r, _)| r.clone())
    }

    /// Forgets a VirtualCluster that is gone.
    fn forget(&self, id: &str) {
        if let Ok(mut state) = self.state.lock() {
            state.remove(id);
        }
    }
}

/// `builtin` readiness: the virtual API answers and every promoted node is Ready.
fn check_readiness(
    ctx: &Context,
    vc: &VirtualCluster,
    kubeconfig: Option<&SafeKubeconfig>,
) -> Readiness {
    let current = vc.phase();
    if current == phase::ALL_NODE_READY || current == phase::COMPLETED {
        return Readiness::Ready;
    }
    if !["", phase::PREPARING, phase::INITIALIZED, phase::PENDING].contains(&current) {
        return Readiness::NotReady(format!("phase {current} is not one the operator advances"));
    }
    let Some(kubeconfig) = kubeconfig else {
        return Readiness::NotReady("no usable kubeconfig for the virtual cluster yet".into());
    };
    let nodes = vc
        .spec
        .promote_resources
        .as_ref()
        .map(|p| p.node_names())
        .unwrap_or_default();
    let text = kubeconfig.to_yaml();
    let key = contract::short_hash(
        &[
            vc.uid().unwrap_or_default().as_bytes(),
            text.as_bytes(),
            nodes.join(",").as_bytes(),
        ],
        32,
    );
    let id = format!("{}/{}", vc.namespace().unwrap_or_default(), vc.name_any());
    ctx.probes.answer(id, key, probe(text, nodes))
}

/// Asks the virtual API for its version and each promoted node's Ready condition, with a client
/// built from the checked kubeconfig only.
async fn probe(kubeconfig: String, nodes: Vec<String>) -> Result<(), String> {
    let parsed = kube::config::Kubeconfig::from_yaml(&kubeconfig)
        .map_err(|e| format!("the kubeconfig does not parse: {e}"))?;
    let mut config =
        kube::Config::from_custom_kubeconfig(parsed, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| format!("the kubeconfig is not usable: {e}"))?;
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(10));
    let client =
        Client::try_from(config).map_err(|e| format!("no client for the virtual cluster: {e}"))?;
    client
        .apiserver_version()
        .await
        .map_err(|e| format!("the virtual API does not answer: {e}"))?;
    let api: Api<Node> = Api::all(client.clone());
    let mut not_ready = Vec::new();
    for node in &nodes {
        let ready = api
            .get_opt(node)
            .await
            .map_err(|e| format!("reading node {node} in the virtual cluster: {e}"))?
            .and_then(|n| n.status)
            .and_then(|s| s.conditions)
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if !ready {
            not_ready.push(node.clone());
        }
    }
    if not_ready.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "promoted nodes not Ready: {}",
            not_ready.join(", ")
        ))
    }
}

async fn add_finalizer(api: &Api<VirtualCluster>, vc: &VirtualCluster) -> Result<(), Error> {
    let name = vc.name_any();
    // JSON patch with a test: fails (and we retry) if someone changed the list meanwhile.
    let patch = if vc.finalizers().is_empty() {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [contract::FINALIZER]},
        ])
    } else {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": vc.finalizers()},
            {"op": "add", "path": "/metadata/finalizers/-", "value": contract::FINALIZER},
        ])
    };
    patch_json(api, &name, patch, "adding the finalizer to").await
}

async fn remove_finalizer(api: &Api<VirtualCluster>, vc: &VirtualCluster) -> Result<(), Error> {
    let name = vc.name_any();
    let Some(index) = vc
        .finalizers()
        .iter()
        .position(|f| f == contract::FINALIZER)
    else {
        return Ok(());
    };
    let path = format!("/metadata/finalizers/{index}");
    let patch = json!([
        {"op": "test", "path": path, "value": contract::FINALIZER},
        {"op": "remove", "path": path},
    ]);
    patch_json(api, &name, patch, "removing the finalizer from").await
}

async fn patch_json(
    api: &Api<VirtualCluster>,
    name: &str,
    patch: serde_json::Value,
    what: &str,
) -> Result<(), Error> {
    let patch: json_patch::Patch = serde_json::from_value(patch)
        .map_err(|e| Error::Internal(format!("{what} {name}: {e}")))?;
    match api
        .patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) => Ok(()),
        // A failed test op answers 422 (Invalid) or 409: the list changed, read again.
        Err(e) if is_status(&e, 422) || is_status(&e, 409) => {
            Err(Error::Conflict(format!("virtualcluster {name}")))
        }
        Err(e) => Err(Error::Kube {
            what: format!("{what} virtualcluster {name}"),
            source: e,
        }),
    }
}

/// The status fields this operator owns, for comparison.
fn owned_view(status: &VirtualClusterStatus, types: &[&str]) -> serde_json::Value {
    let mut conditions: Vec<_> = status
        .conditions
        .iter()
        .filter(|c| types.contains(&c.type_.as_str()))
        .map(|c| serde_json::to_value(c).unwrap_or_default())
        .collect();
    conditions.sort_by_key(|c| c["type"].as_str().unwrap_or_default().to_owned());
    json!({
        "phase": status.phase,
        "reason": status.reason,
        "updateTime": status.update_time,
        "pluginProgress": status.plugin_progress,
        "conditions": conditions,
        "plugins": status.plugins,
    })
}

/// Writes the status by server-side apply on the main resource (the CRD has no status
/// subresource, as Kosmos's), only when it changed, and only if the object is still the
/// version the decision was made on.
async fn write_status(
    api: &Api<VirtualCluster>,
    vc: &VirtualCluster,
    status: &VirtualClusterStatus,
) -> Result<(), Error> {
    let name = vc.name_any();
    let current = vc.status.clone().unwrap_or_default();
    let all_types = [
        kosmos_api::condition::PLUGINS_RESOLVED,
        kosmos_api::condition::KUBECONFIG_AVAILABLE,
        kosmos_api::condition::WEBHOOK_MUTATING,
        kosmos_api::condition::PLUGINS_INSTALLED,
        kosmos_api::condition::VIRTUAL_CLUSTER_READY,
    ];
    if owned_view(&current, &all_types) == owned_view(status, &all_types) {
        return Ok(());
    }
    let body = json!({
        "apiVersion": "kosmos.io/v1alpha1",
        "kind": "VirtualCluster",
        "metadata": {
            "name": name,
            "namespace": vc.namespace(),
            // Optimistic concurrency: the phase may have been changed by Kosmos meanwhile.
            "resourceVersion": vc.resource_version(),
        },
        "status": status,
    });
    api.patch(
        &name,
        &PatchParams::apply(contract::OPERATOR_FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map_err(kube_err(format!(
        "writing the status of virtualcluster {name}"
    )))?;
    debug!(phase = ?status.phase, progress = ?status.plugin_progress, "status written");
    Ok(())
}

async fn publish(ctx: &Context, vc: &VirtualCluster, notes: &[plan::Note]) {
    let reference = vc.object_ref(&());
    for note in notes {
        match note.kind {
            NoteKind::Normal => {
                info!(
                    reason = note.reason,
                    plugin = note.plugin.as_deref(),
                    "{}",
                    note.message
                );
            }
            NoteKind::Warning => {
                warn!(
                    reason = note.reason,
                    plugin = note.plugin.as_deref(),
                    "{}",
                    note.message
                );
            }
        }
        // Our own Event object rather than kube's recorder: the recorder folds events with the
        // same reason into one series that keeps the *first* message (ours differ in what
        // matters: plugin, Job, termination message), and names each event
        // `<object>.<time>`, which is too long for objects with long names.
        let now = Timestamp::now();
        let event = events::v1::Event {
            metadata: ObjectMeta {
                name: Some(event_name(&vc.name_any(), now.as_nanosecond())),
                namespace: vc.namespace(),
                ..ObjectMeta::default()
            },
            action: Some("Reconcile".to_owned()),
            reason: Some(note.reason.to_owned()),
            note: Some(note.message.clone()),
            type_: Some(
                match note.kind {
                    NoteKind::Normal => "Normal",
                    NoteKind::Warning => "Warning",
                }
                .to_owned(),
            ),
            event_time: Some(MicroTime(now)),
            regarding: Some(reference.clone()),
            reporting_controller: Some(ctx.reporter.controller.clone()),
            reporting_instance: Some(
                ctx.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| ctx.reporter.controller.clone()),
            ),
            ..events::v1::Event::default()
        };
        let api: Api<events::v1::Event> =
            Api::namespaced(ctx.client.clone(), &vc.namespace().unwrap_or_default());
        if let Err(error) = api.create(&PostParams::default(), &event).await {
            warn!(%error, reason = note.reason, "could not publish event");
        }
    }
}

/// The name of an event about `object`: `<object>.<time in hex>`, as kube's recorder names
/// them, with the object's name cut and hashed where the whole would pass the 253 characters
/// an object name may have.
fn event_name(object: &str, nanos: i128) -> String {
    let suffix = format!("{nanos:x}");
    let room = 253 - suffix.len() - 1;
    if object.len() <= room {
        return format!("{object}.{suffix}");
    }
    let hash = contract::short_hash(&[object.as_bytes()], 16);
    let cut: String = object.chars().take(room - hash.len() - 1).collect();
    let cut = cut.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    format!("{cut}-{hash}.{suffix}")
}

/// The reporter of this operator's events: the controller name and, in a pod, the pod's name.
pub fn reporter() -> Reporter {
    Reporter {
        controller: contract::OPERATOR_FIELD_MANAGER.to_owned(),
        instance: std::env::var("POD_NAME").ok().filter(|s| !s.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;

    fn bare() -> Job {
        serde_json::from_value(json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": { "name": "vc-dns-install-1", "namespace": "ns" },
        }))
        .unwrap()
    }

    /// A restarted operator (or a second replica) asks for a Job that exists: AlreadyExists is
    /// answered by reading that Job, never by a second one.
    #[tokio::test]
    async fn already_exists_means_found() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<Job> = Api::namespaced(Client::new(service, "ns"), "ns");
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.expect("a create");
            assert_eq!(request.method(), Method::POST);
            assert!(
                request
                    .uri()
                    .query()
                    .unwrap_or_default()
                    .contains("fieldManager=virtual-cluster-operator")
            );
            let conflict = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "AlreadyExists", "code": 409, "message": "jobs.batch \"vc-dns-install-1\" already exists"});
            send.send_response(
                Response::builder()
                    .status(StatusCode::CONFLICT)
                    .body(Body::from(serde_json::to_vec(&conflict).unwrap()))
                    .unwrap(),
            );
            let (request, send) = handle.next_request().await.expect("a read");
            assert_eq!(request.method(), Method::GET);
            assert!(
                request
                    .uri()
                    .path()
                    .ends_with("/namespaces/ns/jobs/vc-dns-install-1")
            );
            let mut existing = bare();
            existing.metadata.annotations =
                Some([(contract::INJECTED_ANNOTATION.to_owned(), "x".to_owned())].into());
            send.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&existing).unwrap()))
                    .unwrap(),
            );
            assert!(handle.next_request().await.is_none(), "no further call");
        });
        let job = create_job(&api, &bare(), "vc-dns-install-1").await.unwrap();
        assert!(
            job.annotations()
                .contains_key(contract::INJECTED_ANNOTATION)
        );
        drop(api);
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }

    /// The reconciler never waits on a probe; a probe that hangs (a virtual API that accepts and
    /// never answers) ends at its bound; a fresh answer is reused; another kubeconfig is probed
    /// anew.
    #[tokio::test]
    async fn probes_run_beside_the_reconciler_and_are_bounded() {
        let probes = Arc::new(Probes {
            timeout: Duration::from_millis(200),
            ..Probes::default()
        });
        let started = std::time::Instant::now();
        let first = probes.answer("ns/vc".into(), "k1".into(), std::future::pending());
        assert_eq!(first, Readiness::NotReady(PROBING.into()));
        assert!(started.elapsed() < Duration::from_millis(100));
        // Still running: no second probe.
        let again = probes.answer("ns/vc".into(), "k1".into(), async {
            panic!("a second probe while one runs")
        });
        assert_eq!(again, Readiness::NotReady(PROBING.into()));
        tokio::time::sleep(Duration::from_millis(400)).await;
        let bounded = probes.answer("ns/vc".into(), "k1".into(), async {
            panic!("a second probe while the answer is fresh")
        });
        assert_eq!(
            bounded,
            Readiness::NotReady("the virtual API did not answer within 200ms".into())
        );
        // Another kubeconfig: the old answer says nothing about it.
        let other = probes.answer("ns/vc".into(), "k2".into(), async { Ok(()) });
        assert_eq!(other, Readiness::NotReady(PROBING.into()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let ready = probes.answer("ns/vc".into(), "k2".into(), std::future::pending());
        assert_eq!(ready, Readiness::Ready);
        probes.forget("ns/vc");
        let forgotten = probes.answer("ns/vc".into(), "k2".into(), async { Ok(()) });
        assert_eq!(forgotten, Readiness::NotReady(PROBING.into()));
    }

    #[test]
    fn event_names_fit_whatever_the_object_name() {
        let nanos = 1_800_000_000_123_456_789_i128;
        assert_eq!(event_name("vc", nanos), format!("vc.{nanos:x}"));
        let long_a = format!("{}a", "v".repeat(252));
        let long_b = format!("{}b", "v".repeat(252));
        for long in [&long_a, &long_b] {
            let name = event_name(long, nanos);
            assert!(name.len() <= 253, "{} characters", name.len());
            assert!(name.starts_with("vvvv") && !name.contains("-."), "{name}");
        }
        assert_ne!(event_name(&long_a, nanos), event_name(&long_b, nanos));
    }

    #[test]
    fn spec_kubeconfig_is_base64_possibly_wrapped() {
        assert_eq!(decode_spec_kubeconfig(None), None);
        assert_eq!(decode_spec_kubeconfig(Some("  ")), None);
        let wrapped = "YXBpVmVyc2lv\nbjogdjE=\n";
        assert_eq!(
            decode_spec_kubeconfig(Some(wrapped)),
            Some(Ok(b"apiVersion: v1".to_vec()))
        );
        let err = decode_spec_kubeconfig(Some("apiVersion: v1"))
            .unwrap()
            .unwrap_err();
        assert!(
            err.contains("not valid base64") && !err.contains("apiVersion"),
            "{err}"
        );
    }

    fn status(phase: &str, plugins: usize) -> VirtualClusterStatus {
        VirtualClusterStatus {
            phase: Some(phase.into()),
            plugin_progress: Some(format!("0/{plugins}")),
            port: Some(6443),
            ..VirtualClusterStatus::default()
        }
    }

    #[test]
    fn owned_view_ignores_fields_of_others() {
        let types = [kosmos_api::condition::PLUGINS_INSTALLED];
        let mut theirs = status("AllNodeReady", 1);
        theirs.port = Some(1234);
        theirs
            .conditions
            .push(k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: "KosmosOwn".into(),
                status: "True".into(),
                reason: "x".into(),
                message: String::new(),
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    Timestamp::UNIX_EPOCH,
                ),
                observed_generation: None,
            });
        assert_eq!(
            owned_view(&theirs, &types),
            owned_view(&status("AllNodeReady", 1), &types)
        );
        assert_ne!(
            owned_view(&status("Completed", 1), &types),
            owned_view(&status("AllNodeReady", 1), &types)
        );
        assert_ne!(
            owned_view(&status("AllNodeReady", 2), &types),
            owned_view(&status("AllNodeReady", 1), &types)
        );
    }
}
