//! The reconciler: observes one VirtualCluster (fresh from the API, so a restart or a stale
//! cache never leads to a second Job), asks [`plan`](crate::plan) what to do, does it, and
//! writes the status by server-side apply.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{FutureExt as _, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kosmos_api::contract::{self, ExecutorJobId};
use kosmos_api::{VirtualCluster, VirtualClusterPlugin};
use kube::api::{DeleteParams, ListParams, ObjectList, PostParams, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::reflector::{self, Store, reflector};
use kube::runtime::{Controller, WatchStreamExt as _, watcher};
use kube::{Api, ResourceExt};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::context::{Context, ReadinessMode};
use crate::error::{Error, is_status, kube_err};
use crate::events::publish;
use crate::finalizer::{add_finalizer, remove_finalizer};
use crate::jobs;
use crate::kubeconfig::ensure_kubeconfig;
use crate::plan::{
    self, Deletion, JobView, Kubeconfig, NewJob, Observed, Plan, Readiness, Rejection, Step,
    TakenName,
};
use crate::readiness::{POLL, PROBE_POLL, PROBING, check_readiness};
use crate::status::write_status;
use crate::triggers;

/// Look again this often even when nothing happens (missed watch events, readiness polling).
const RESYNC: Duration = Duration::from_secs(300);

/// Backoff of the controller's watches after a watch error. kube-runtime's default (0.8 s
/// doubling to 30 s, jitter up to twice that, reset only by an event or 120 s without errors)
/// is shared by every watch of a controller: after an apiserver restart, each of our three
/// watches fails once more (expired resourceVersion) before it lists again, and each failure
/// stopped all three for up to a minute, so the operator was deaf for 2 to 4 minutes (the
/// host-apiserver drill in e2e/tests/drills.rs measured it). Capped at 5 s, the three
/// failures cost seconds; one list per 5 s per watch is still gentle on an apiserver.
#[derive(Clone, Debug)]
struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (now * 2).min(Self::MAX);
        Some(now)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// Runs the controller until `shutdown` resolves. `ready` turns true once it watches. With
/// watched namespaces, each gets a controller of its own (its own watches, which Roles in that
/// namespace allow); a VirtualCluster, its plugins and its Jobs always share one namespace, so
/// nothing is lost between them.
pub async fn run(
    ctx: Arc<Context>,
    ready: Arc<AtomicBool>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let shutdown = shutdown.shared();
    let controllers: Vec<_> = if ctx.config.namespaces.is_empty() {
        vec![
            watch(
                ctx.clone(),
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client.clone()),
                shutdown,
            )
            .boxed(),
        ]
    } else {
        ctx.config
            .namespaces
            .iter()
            .map(|ns| {
                watch(
                    ctx.clone(),
                    Api::namespaced(client.clone(), ns),
                    Api::namespaced(client.clone(), ns),
                    Api::namespaced(client.clone(), ns),
                    shutdown.clone(),
                )
                .boxed()
            })
            .collect()
    };
    ready.store(true, Ordering::SeqCst);
    futures::future::join_all(controllers).await;
}

/// One controller over the VirtualClusters of `vcs`, owning the executor Jobs of `jobs` and
/// woken by the plugins of `plugins` (all three over the same namespace, or all namespaces).
async fn watch(
    ctx: Arc<Context>,
    vcs: Api<VirtualCluster>,
    plugins: Api<VirtualClusterPlugin>,
    jobs: Api<Job>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let settings = kube::runtime::controller::Config::default()
        .concurrency(ctx.config.concurrent_reconciles)
        .debounce(ctx.config.reconcile_debounce);
    // The stores see every event; the reconciler is woken only by the ones it can act on. They
    // keep no managed fields: nothing reads them, and with a few field managers per object
    // they were a tenth of the operator's memory at a thousand VirtualClusters.
    let (store, writer) = reflector::store();
    let vc_events = reflector(
        writer,
        watcher(vcs, watcher::Config::default()).modify(drop_managed_fields),
    );
    let (plugin_store, plugin_writer) = reflector::store();
    let plugin_events = reflector(
        plugin_writer,
        watcher(plugins, watcher::Config::default()).modify(drop_managed_fields),
    )
    .touched_objects();
    let job_events = watcher(
        jobs,
        watcher::Config::default().labels(contract::EXECUTOR_SELECTOR),
    );
    Controller::for_stream(
        triggers::virtual_clusters().filter(vc_events),
        store.clone(),
    )
    .with_config(settings)
    .trigger_backoff(WatchBackoff::new())
    .owns_stream(triggers::executor_jobs().filter(job_events))
    // A plugin change wakes the VirtualClusters it concerns, not its whole namespace: with a
    // thousand VirtualClusters, an edit of one tenant's plugin would otherwise reconcile all.
    .watches_stream(plugin_events, move |plugin: VirtualClusterPlugin| {
        store
            .state()
            .into_iter()
            .filter(|vc| plan::concerns(vc, &plugin))
            .map(|vc| ObjectRef::from_obj(&*vc))
            .collect::<Vec<_>>()
    })
    .graceful_shutdown_on(shutdown)
    .run(
        reconcile,
        error_policy,
        Arc::new(Watched {
            ctx,
            plugins: plugin_store,
        }),
    )
    .for_each(|result| async move {
        if let Err(error) = result {
            debug!(%error, "reconcile did not finish");
        }
    })
    .await;
}

fn drop_managed_fields(object: &mut impl ResourceExt) {
    object.managed_fields_mut().clear();
}

/// What one controller's reconciliations share: the [`Context`] and what its watches hold.
struct Watched {
    ctx: Arc<Context>,
    /// The plugins of the controller's namespaces as last seen. A plugin's change wakes the
    /// VirtualClusters it concerns once it is in here, so a reconciliation never acts on a
    /// plugin set older than the change that woke it.
    plugins: Store<VirtualClusterPlugin>,
}

impl Watched {
    /// The plugins of `ns` in name order (as a list would give them: the status lists plugins
    /// in this order, and another order would rewrite it). Waits for the watch's first listing:
    /// an empty store would say "no plugins" and complete a VirtualCluster with plugins to
    /// install.
    async fn plugins(&self, ns: &str) -> Result<Vec<VirtualClusterPlugin>, Error> {
        self.plugins.wait_until_ready().await.map_err(|e| {
            Error::Internal(format!("the virtualclusterplugins watch has stopped: {e}"))
        })?;
        let mut plugins: Vec<VirtualClusterPlugin> = self
            .plugins
            .state()
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
            .map(|p| VirtualClusterPlugin::clone(p))
            .collect();
        plugins.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        Ok(plugins)
    }
}

fn error_policy(vc: Arc<VirtualCluster>, error: &Error, watched: Arc<Watched>) -> Action {
    let ctx = &watched.ctx;
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

async fn reconcile(vc: Arc<VirtualCluster>, watched: Arc<Watched>) -> Result<Action, Error> {
    let ns = vc.namespace().unwrap_or_default();
    let name = vc.name_any();
    let span = info_span!("reconcile", virtualcluster = %format!("{ns}/{name}"));
    watched.ctx.metrics.reconciled();
    reconcile_one(&ns, &name, &watched).instrument(span).await
}

/// Seconds resolution, as the API stores times: a status computed twice from the same state
/// compares equal to what was written.
fn now() -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now())
}

async fn reconcile_one(ns: &str, name: &str, watched: &Watched) -> Result<Action, Error> {
    let ctx = &*watched.ctx;
    let client = ctx.client.clone();
    let vcs: Api<VirtualCluster> = Api::namespaced(client.clone(), ns);
    let jobs_api: Api<Job> = Api::namespaced(client.clone(), ns);
    // Fresh, not from the cache: decisions about Jobs must not rest on stale state. Both in one
    // round trip: which of the Jobs are this VirtualCluster's is told by the uid read with it.
    let executors = ListParams::default().labels(&ExecutorJobId::selector(name));
    let (found, listed) = tokio::join!(vcs.get_opt(name), jobs_api.list(&executors));
    let Some(mut vc) = found.map_err(kube_err(format!("reading virtualcluster {ns}/{name}")))?
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
                // Go on with the patched object: the finalizer's own change does not wake the
                // VirtualCluster again (triggers.rs).
                let Some(patched) = add_finalizer(&vcs, &vc).await? else {
                    return Ok(Action::await_change());
                };
                vc = patched;
            }
            None
        }
    };

    // What is left to read is independent, and mostly needs no round trip: the kubeconfig
    // Secret at most once a minute, the plugins from the watch, the pods of failed Jobs.
    let (kubeconfig_found, plugins, views) = tokio::join!(
        ensure_kubeconfig(ctx, &vc),
        watched.plugins(ns),
        observe_jobs(ctx, ns, &vc, listed),
    );
    let (kubeconfig, safe_kubeconfig) = match kubeconfig_found {
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
    let plugins = plugins?;
    let mut views = views?;
    let outside = Outside {
        kubeconfig,
        readiness,
        deletion,
    };
    let Some(Settled { plan, notes }) = settle(ctx, &vc, &plugins, &outside, &mut views).await?
    else {
        return Ok(Action::requeue(RESYNC));
    };
    let Outside {
        kubeconfig,
        readiness,
        deletion,
    } = outside;

    let running = views
        .iter()
        .filter(|v| !v.deleting && v.outcome == plan::JobOutcome::Running)
        .count();
    ctx.metrics
        .jobs_running(&format!("{ns}/{name}"), i64::try_from(running).unwrap_or(0));
    for installed in &plan.installed {
        ctx.metrics.installed(installed.took);
    }

    write_status(&vcs, &vc, &plan.status).await?;
    publish(&watched.ctx, &vc, &notes);

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

/// Passes of [`settle`] at most: create, find a Job unmarked, delete it, write what exists.
const SETTLE_PASSES: usize = 4;

/// Job creations one reconciliation has in flight at most: all of a VirtualCluster's plugins in
/// the common case, without letting one with a hundred plugins take the apiserver's share of
/// the others ([`crate::server::Args::concurrent_reconciles`] of these at once). The chart's
/// guard on `webhook.maxConnections` writes it as a literal; `e2e/tests/chart.rs` checks that
/// the two agree.
pub const CREATES_AT_ONCE: usize = 8;

/// What a reconciliation observed outside the Jobs; fixed for all passes of [`settle`].
struct Outside {
    kubeconfig: Kubeconfig,
    readiness: Readiness,
    deletion: Option<Deletion>,
}

/// What [`settle`] leaves: the last plan (its status is what exists now) and the notes of every
/// pass, each once.
struct Settled {
    plan: Plan,
    notes: Vec<plan::Note>,
}

/// The step loop: plan, act, fold what the API answered into `views`, plan again, until a plan
/// has no steps (or [`SETTLE_PASSES`]): a created Job that lacks the webhook's mark is deleted
/// in the same reconciliation, and the status written reflects what exists. None when no pass
/// ran.
async fn settle(
    ctx: &Context,
    vc: &VirtualCluster,
    plugins: &[VirtualClusterPlugin],
    outside: &Outside,
    views: &mut Vec<JobView>,
) -> Result<Option<Settled>, Error> {
    let ns = vc.namespace().unwrap_or_default();
    let ns = ns.as_str();
    let name = vc.name_any();
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let mut notes = Vec::new();
    let mut last: Option<Plan> = None;
    let mut rejected: Vec<Rejection> = Vec::new();
    let mut webhook_unavailable: Option<String> = None;
    let mut taken: Vec<TakenName> = Vec::new();
    for _ in 0..SETTLE_PASSES {
        let obs = Observed {
            vc,
            plugins,
            jobs: views,
            kubeconfig: outside.kubeconfig.clone(),
            readiness: outside.readiness.clone(),
            deletion: outside.deletion.clone(),
            rejected: &rejected,
            webhook_unavailable: webhook_unavailable.clone(),
            taken: &taken,
            now: now(),
        };
        let plan = plan::plan(&obs, &ctx.config.plan);
        for note in &plan.notes {
            if !notes.contains(note) {
                notes.push(note.clone());
            }
        }
        // Each pass compares against the same old status, so only the last pass counts.
        let steps = plan.steps.clone();
        last = Some(plan);
        if steps.is_empty() {
            break;
        }
        let mut creates: Vec<NewJob> = Vec::new();
        let mut deletes: Vec<(String, String)> = Vec::new();
        for step in steps {
            match step {
                Step::CreateJob(new) => creates.push(new),
                Step::DeleteJob { name, why } => deletes.push((name, why)),
            }
        }
        for (job, why) in deletes {
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
        // A VirtualCluster's Jobs are created at once (each waits for the webhook in the
        // admission chain): its plugins start together and the reconciliation holds its slot
        // for one round trip, not one per plugin. Results are taken in the plan's order.
        let api = &jobs_api;
        let tries: Vec<_> = futures::stream::iter(creates.into_iter().map(|new| async move {
            let plugin = new.id.plugin.clone();
            let mut moved = Vec::new();
            let result = create_free_job(ctx, vc, api, new, &mut moved).await;
            (plugin, moved, result)
        }))
        .buffered(CREATES_AT_ONCE)
        .collect()
        .await;
        // Created Jobs are checked after the pass's last create: reading the mark key Secret in
        // between would delay the next create by a round trip.
        let mut created: Vec<Job> = Vec::new();
        for (plugin, moved, result) in tries {
            taken.extend(moved);
            let stored = match result {
                Ok(Some(stored)) => stored,
                Ok(None) => {
                    let names: Vec<String> = taken
                        .iter()
                        .filter(|t| t.plugin == plugin)
                        .map(|t| format!("{ns}/{}", t.job))
                        .collect();
                    warn!(plugin = %plugin, jobs = ?names, "every job name tried is taken by a job this virtualcluster does not own");
                    // Nothing created: back off as for a refused Job; the next try starts past
                    // these names only once a Job of ours exists, so the message names them all.
                    taken.retain(|t| t.plugin != plugin);
                    rejected.push(Rejection {
                        plugin: plugin.clone(),
                        message: format!(
                            "job names {} are taken by Jobs that VirtualCluster {name} does not own: delete them",
                            names.join(", ")
                        ),
                    });
                    continue;
                }
                Err(Error::Kube {
                    source: kube::Error::Api(status),
                    ..
                }) if webhook_not_called(&status) => {
                    warn!(plugin = %plugin, code = status.code,
                        message = %status.message, "the API server could not call the webhook for the executor job");
                    webhook_unavailable = Some(status.message.clone());
                    rejected.push(Rejection {
                        plugin,
                        message: status.message.clone(),
                    });
                    continue;
                }
                Err(Error::Kube {
                    source: kube::Error::Api(status),
                    ..
                }) if (400..500).contains(&status.code) && status.code != 409 => {
                    warn!(plugin = %plugin, code = status.code,
                        message = %status.message, "the API server refused the executor job");
                    rejected.push(Rejection {
                        plugin,
                        message: status.message.clone(),
                    });
                    continue;
                }
                Err(e) => return Err(e),
            };
            created.push(stored);
        }
        for stored in created {
            let keys = ctx.mark_keys.for_job(&ctx.client, &stored).await?;
            if let Some(view) = jobs::job_view(&stored, None, &keys) {
                views.retain(|v| v.name != view.name);
                views.push(view);
            }
        }
    }
    Ok(last.map(|plan| Settled { plan, notes }))
}

/// Names tried for one new Job before giving up for this reconciliation: each taken name moves
/// the Job to the next attempt's name.
const NAME_TRIES: u32 = 5;

/// Creates the bare Job for `new`. A name held by a Job this VirtualCluster does not own (a
/// squatter without the owner reference, or a Job of an earlier VirtualCluster of the same name)
/// is recorded in `taken` and the Job moves to the next attempt's name, so a taken name never
/// holds the plugin up. None when [`NAME_TRIES`] names were all taken.
async fn create_free_job(
    ctx: &Context,
    vc: &VirtualCluster,
    jobs_api: &Api<Job>,
    mut new: NewJob,
    taken: &mut Vec<TakenName>,
) -> Result<Option<Job>, Error> {
    let mut moved_from: Vec<String> = Vec::new();
    for _ in 0..NAME_TRIES {
        let mut job = jobs::with_executor_pod(
            jobs::bare_job(vc, &new, &ctx.config.executor_image),
            &ctx.config.executor_pod,
        );
        if !moved_from.is_empty() {
            job.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(
                    contract::TAKEN_NAMES_ANNOTATION.to_owned(),
                    moved_from.join(","),
                );
        }
        let job_name = new.name();
        let stored = create_job(jobs_api, &job, &job_name).await?;
        let ours = stored
            .owner_references()
            .iter()
            .any(|o| Some(&o.uid) == vc.metadata.uid.as_ref());
        if !ours {
            warn!(plugin = %new.id.plugin, job = %job_name,
                "the executor job's name is taken by a job this virtualcluster does not own; moving to the next name");
            moved_from.push(job_name);
            new.id.attempt = new.id.attempt.saturating_add(1);
            continue;
        }
        info!(plugin = %new.id.plugin, job = %job_name, action = %new.id.action, attempt = new.id.attempt,
            injected = stored.annotations().contains_key(contract::INJECTED_ANNOTATION),
            "executor job created");
        taken.extend(moved_from.into_iter().map(|job| TakenName {
            plugin: new.id.plugin.clone(),
            job,
            instead: Some(job_name.clone()),
        }));
        return Ok(Some(stored));
    }
    taken.extend(moved_from.into_iter().map(|job| TakenName {
        plugin: new.id.plugin.clone(),
        job,
        instead: None,
    }));
    Ok(None)
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

/// The executor Jobs of the VirtualCluster from `listed` (its executor Jobs, fresh from the
/// API), with the termination message of failed ones. Jobs of an older VirtualCluster of the
/// same name (another uid) are not ours.
async fn observe_jobs(
    ctx: &Context,
    ns: &str,
    vc: &VirtualCluster,
    listed: Result<ObjectList<Job>, kube::Error>,
) -> Result<Vec<JobView>, Error> {
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let list = listed.map_err(kube_err(format!("listing executor jobs in {ns}")))?;
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
        let keys = ctx.mark_keys.for_job(&ctx.client, &job).await?;
        if let Some(view) = jobs::job_view(&job, message, &keys) {
            views.push(view);
        }
    }
    Ok(views)
}

#[cfg(test)]
mod tests {

    use super::*;

    use http::{Method, Request, Response, StatusCode};
    use kube::Client;
    use kube::client::Body;
    use serde_json::json;
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

    /// A VirtualCluster's Jobs are created at once: all three creates are in flight before the
    /// API server answers the first; a server error on them ends the reconciliation with it.
    #[tokio::test]
    async fn a_virtual_clusters_jobs_are_created_at_once() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let args =
            crate::server::Args::local("ns", "test", &["--max-parallel-jobs", "3"]).expect("flags");
        let ctx = Context::new(Client::new(service, "ns"), Arc::default(), args.config());
        let names = ["a", "b", "c"];
        let plugins: Vec<VirtualClusterPlugin> = names
            .iter()
            .map(|name| {
                serde_json::from_value(json!({
                    "apiVersion": "kosmos.io/v1alpha1", "kind": "VirtualClusterPlugin",
                    "metadata": { "name": name, "namespace": "ns" },
                    "spec": { "pluginSources": { "yaml": { "path": {
                        "uri": format!("https://example.com/{name}.yaml") } } } },
                }))
                .unwrap()
            })
            .collect();
        let vc: VirtualCluster = serde_json::from_value(json!({
            "apiVersion": "kosmos.io/v1alpha1", "kind": "VirtualCluster",
            "metadata": { "name": "vc", "namespace": "ns", "uid": "uid-1" },
            "spec": { "pluginSet": { "enabled": names.map(|n| json!({"name": n})) } },
            "status": { "phase": "AllNodeReady" },
        }))
        .unwrap();
        let outside = Outside {
            kubeconfig: Kubeconfig::Available,
            readiness: Readiness::External,
            deletion: None,
        };
        let server = async move {
            let mut pending = Vec::new();
            for _ in names {
                let (request, send) =
                    tokio::time::timeout(Duration::from_secs(5), handle.next_request())
                        .await
                        .expect("every create in flight before any is answered")
                        .expect("a request");
                assert_eq!(request.method(), Method::POST);
                assert!(request.uri().path().ends_with("/namespaces/ns/jobs"));
                pending.push(send);
            }
            let failure = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "InternalError", "code": 500, "message": "etcd is away"});
            for send in pending {
                send.send_response(
                    Response::builder()
                        .status(StatusCode::INTERNAL_SERVER_ERROR)
                        .body(Body::from(serde_json::to_vec(&failure).unwrap()))
                        .unwrap(),
                );
            }
            handle
        };
        let mut views = Vec::new();
        let (settled, mut handle) =
            tokio::join!(settle(&ctx, &vc, &plugins, &outside, &mut views), server);
        let error = settled
            .err()
            .expect("the server error ends the reconciliation");
        assert!(error.to_string().contains("etcd is away"), "{error}");
        drop(ctx);
        assert!(handle.next_request().await.is_none(), "no further call");
    }

    #[test]
    fn watch_backoff_doubles_to_a_few_seconds_and_resets() {
        use kube::runtime::utils::Backoff as _;
        let mut backoff = super::WatchBackoff::new();
        let delays: Vec<u64> = backoff
            .by_ref()
            .take(6)
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 5000, 5000]);
        backoff.reset();
        assert_eq!(backoff.next(), Some(std::time::Duration::from_millis(500)));
    }
}
