//! Fault drills on the whole stack with the real node: the real webhook (TLS, registered with the
//! host apiserver), the operator's controller, the job controller and the kubelet running the
//! executor image against the virtual control plane, while `e2e/cluster.sh kill-component` /
//! `start-component` kill (a crash: no graceful shutdown, and no 15 s wait for one) and start
//! again the control plane's own processes and the node's kubelet:
//!
//! - the **virtual apiserver stopped** during installs: every plugin fails with a message saying
//!   the virtual cluster's API server is unreachable, is retried with backoff, nothing succeeds
//!   while it is down, and everything completes once it is back; then, stopped again for good,
//!   deleting the VirtualClusters (with uninstall) still finishes within a bound;
//! - the **host apiserver and etcd restarted** mid-rollout: the operator's and webhook's watches
//!   recover, no two live executor Jobs for one (VirtualCluster, plugin, action, attempt), and
//!   the status ends correct (every plugin Succeeded by a marked Job that really succeeded);
//! - the **node gone** while executor pods run (its kubelet stopped and the Node deleted, as
//!   when a machine dies and is removed): the pod garbage collector fails the orphaned pods,
//!   the plugin is retried and never counted as succeeded by the lost attempt, nothing succeeds
//!   while there is no node, and everything completes once the node is back.
//!
//! Invariants are checked on every watch event throughout (see [`check_vc`]). The drills stop
//! components of THIS checkout's local cluster only (its `e2e/.state`), one drill at a time; a
//! guard starts a stopped component again even when a drill fails, so the tests after it find
//! the cluster whole. `make drills` runs them larger (`KOSMOS_DRILLS=full`) and prints the same
//! `drill-table` lines as the operator's drills.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use base64::Engine as _;
use futures::StreamExt as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kosmos_api::{PluginPhase, VirtualCluster, VirtualClusterPlugin, contract, phase};
use kosmos_e2e::{Cluster, Identity, TestNamespace, wait_for, webhook_host};
use kosmos_operator::context::{Config, Context, ReadinessMode};
use kosmos_operator::controller;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// The drills stop parts of the one shared control plane: never two at once.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PLUGINS: [&str; 2] = ["first", "second"];
/// ConfigMap in the virtual cluster whose existence lets a gated plugin succeed.
const GATE: &str = "drill-gate";
/// The user the operator acts as (impersonated, with admin rights); the webhook mutates only
/// Jobs this user creates.
const OPERATOR_USER: &str = "kosmos-drill-operator";

/// `make drills` runs the full size.
fn full() -> bool {
    std::env::var("KOSMOS_DRILLS").is_ok_and(|v| v == "full")
}

fn rollout_bound() -> Duration {
    Duration::from_secs(if full() { 600 } else { 240 })
}

/// `e2e/cluster.sh VERB NAME` on this checkout's cluster.
fn cluster_sh(verb: &str, name: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(kosmos_e2e::e2e_dir().join("cluster.sh"));
    cmd.args([verb, name]);
    cmd
}

async fn component(verb: &str, name: &str) -> Result<()> {
    let status = tokio::process::Command::from(cluster_sh(verb, name))
        .status()
        .await
        .with_context(|| format!("running e2e/cluster.sh {verb} {name}"))?;
    ensure!(
        status.success(),
        "e2e/cluster.sh {verb} {name} failed ({status})"
    );
    Ok(())
}

/// Starts the named components again (in this order) when dropped, if they are not running:
/// a failing drill must not leave the shared cluster broken for the tests after it.
struct Restart(&'static [&'static str]);

impl Drop for Restart {
    fn drop(&mut self) {
        for name in self.0 {
            if let Err(e) = cluster_sh("start-component", name).status() {
                eprintln!("could not start {name} again: {e}");
            }
        }
    }
}

/// Waits until both control planes serve their controllers again after a drill stopped parts of
/// them: a new namespace in each gets its `default` ServiceAccount from the controller-manager.
/// After an apiserver was down for a minute, the controller-manager's (and kubelet's) watches
/// retry with client-go's backoff, up to 30 s doubled by jitter, so a namespace made right after
/// the restart may wait a minute for its account: a test after the drill (which waits 30 s for
/// it, see `TestNamespace::create`) failed that way. Bounded generously; quick when healthy.
async fn control_planes_recovered() -> Result<()> {
    for cluster in [Cluster::Host, Cluster::Virtual] {
        wait_for(
            &format!("the {cluster:?} controller-manager to serve a new namespace again"),
            Duration::from_secs(300),
            || async move {
                match TestNamespace::create(cluster, "drill-recovered").await {
                    Ok(ns) => {
                        ns.delete().await?;
                        Ok(Some(()))
                    }
                    Err(e) => {
                        eprintln!("{cluster:?} control plane not recovered yet: {e:#}");
                        Ok(None)
                    }
                }
            },
        )
        .await?;
    }
    Ok(())
}

/// What the watchers saw.
#[derive(Default)]
struct Record {
    /// While set, no plugin may succeed: the virtual cluster cannot be installed into, or no
    /// node can run an executor.
    installs_impossible: AtomicBool,
    /// Jobs checked to be marked by the webhook and to have succeeded.
    verified_jobs: Mutex<BTreeSet<String>>,
    /// Succeeded plugins whose Job could not be read at the time (apiserver down): checked at
    /// the end.
    unverified_jobs: Mutex<BTreeSet<String>>,
    violations: Mutex<Vec<String>>,
    checks: AtomicU64,
    stop: AtomicBool,
}

impl Record {
    fn violation(&self, what: String) {
        eprintln!("INVARIANT BROKEN: {what}");
        self.violations.lock().unwrap().push(what);
    }
}

/// A Job that counts: marked by the webhook and run to success by the job controller.
fn job_really_succeeded(job: &Job) -> bool {
    job.annotations()
        .contains_key(contract::INJECTED_ANNOTATION)
        && job.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) >= 1
}

/// Checks a Job named by a Succeeded plugin entry: fresh from the apiserver (the two watch
/// streams may deliver out of order), once per Job.
async fn verify_job(jobs: &Api<Job>, name: &str, rec: &Record) {
    if rec.verified_jobs.lock().unwrap().contains(name) {
        return;
    }
    match jobs.get_opt(name).await {
        Ok(Some(job)) if job_really_succeeded(&job) => {
            rec.verified_jobs.lock().unwrap().insert(name.to_owned());
        }
        Ok(Some(_)) => rec.violation(format!(
            "Job {name} counted as Succeeded but it is unmarked or has no succeeded pod"
        )),
        // Deleted Jobs of a deleted VirtualCluster are no evidence either way.
        Ok(None) => {}
        Err(_) => {
            rec.unverified_jobs.lock().unwrap().insert(name.to_owned());
        }
    }
}

/// The invariants on one VirtualCluster as seen in a watch event.
async fn check_vc(vc: &VirtualCluster, jobs: &Api<Job>, rec: &Record) {
    rec.checks.fetch_add(1, Ordering::Relaxed);
    let name = vc.name_any();
    let entries: Vec<_> = vc.status.iter().flat_map(|s| s.plugins.iter()).collect();
    for entry in &entries {
        if entry.phase != PluginPhase::Succeeded {
            continue;
        }
        if rec.installs_impossible.load(Ordering::Relaxed) {
            rec.violation(format!(
                "VirtualCluster {name}: plugin {} seen Succeeded while no install can succeed \
                 (virtual apiserver stopped or node gone)",
                entry.name
            ));
        }
        match entry.job_name.as_deref() {
            Some(job) => verify_job(jobs, job, rec).await,
            None => rec.violation(format!(
                "VirtualCluster {name}: plugin {} Succeeded without a Job",
                entry.name
            )),
        }
    }
    // A VirtualCluster being deleted keeps its phase while its plugins are uninstalled.
    if vc.phase() == phase::COMPLETED && vc.metadata.deletion_timestamp.is_none() {
        for plugin in PLUGINS {
            let entry = entries.iter().find(|e| e.name == plugin);
            if entry.is_none_or(|e| e.phase != PluginPhase::Succeeded) {
                rec.violation(format!(
                    "VirtualCluster {name} seen Completed while plugin {plugin} is {:?}",
                    entry.map(|e| &e.phase)
                ));
            }
        }
    }
}

fn job_is_live(job: &Job) -> bool {
    let finished = job
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .any(|c| {
            c.status == "True"
                && matches!(
                    c.type_.as_str(),
                    "Complete" | "Failed" | "FailureTarget" | "SuccessCriteriaMet"
                )
        });
    !finished && job.metadata.deletion_timestamp.is_none()
}

fn job_key(job: &Job) -> String {
    let label = |k: &str| job.labels().get(k).cloned().unwrap_or_default();
    let attempt = job
        .annotations()
        .get(contract::ATTEMPT_ANNOTATION)
        .cloned()
        .unwrap_or_default();
    format!(
        "VirtualCluster {} plugin {} {} attempt {attempt}",
        label(contract::VIRTUAL_CLUSTER_LABEL),
        label(contract::PLUGIN_LABEL),
        label(contract::ACTION_LABEL)
    )
}

/// Watches VirtualClusters and executor Jobs (watches that must themselves survive the
/// apiserver's restarts) and checks the invariants on every event.
async fn watch_invariants(client: Client, ns: String, rec: Arc<Record>) {
    let jobs_api: Api<Job> = Api::namespaced(client.clone(), &ns);
    let vcs = watcher(
        Api::<VirtualCluster>::namespaced(client.clone(), &ns),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|e| e.map(|e| (Some(e), None)));
    let jobs = watcher(
        jobs_api.clone(),
        watcher::Config::default().labels(&format!("{}=true", contract::EXECUTOR_LABEL)),
    )
    .default_backoff()
    .map(|e| e.map(|e| (None, Some(e))));
    let mut events = futures::stream::select(vcs.boxed(), jobs.boxed());
    // live Job name -> its key
    let mut live: BTreeMap<String, String> = BTreeMap::new();
    while !rec.stop.load(Ordering::Relaxed) {
        let next = tokio::time::timeout(Duration::from_millis(500), events.next()).await;
        let Ok(Some(Ok((vc_event, job_event)))) = next else {
            continue;
        };
        if let Some(watcher::Event::Apply(vc) | watcher::Event::InitApply(vc)) = vc_event {
            check_vc(&vc, &jobs_api, &rec).await;
        }
        match job_event {
            // A relist after the watch broke: what was deleted meanwhile sends no Delete.
            Some(watcher::Event::Init) => live.clear(),
            Some(watcher::Event::Apply(job) | watcher::Event::InitApply(job)) => {
                rec.checks.fetch_add(1, Ordering::Relaxed);
                let key = job_key(&job);
                if job_is_live(&job) {
                    live.insert(job.name_any(), key.clone());
                } else {
                    live.remove(&job.name_any());
                }
                let same: Vec<&String> = live
                    .iter()
                    .filter(|(_, k)| **k == key)
                    .map(|(n, _)| n)
                    .collect();
                if same.len() > 1 {
                    rec.violation(format!(
                        "{} live executor Jobs for {key}: {same:?}",
                        same.len()
                    ));
                }
            }
            Some(watcher::Event::Delete(job)) => {
                live.remove(&job.name_any());
            }
            _ => {}
        }
    }
}

/// The webhook's registration, removed even when the drill fails.
struct Registration {
    name: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        kosmos_e2e::delete_webhook_configuration_on_drop(&self.name);
    }
}

async fn register_webhook(
    admin: &Client,
    ns: &str,
    port: u16,
    ca_pem: &str,
) -> Result<Registration> {
    let name = format!("kosmos-e2e-drill-{ns}");
    let config = kosmos_e2e::executor_webhook_configuration(
        &name,
        ns,
        &format!("https://{}:{port}/mutate", webhook_host()),
        ca_pem,
        &["CREATE", "UPDATE"],
    );
    Api::<MutatingWebhookConfiguration>::all(admin.clone())
        .create(&PostParams::default(), &config)
        .await
        .with_context(|| format!("registering webhook {name}"))?;
    Ok(Registration { name })
}

/// One drill: the whole stack in its own namespace, and the invariant watcher.
struct Stack {
    name: &'static str,
    ns: TestNamespace,
    /// The namespace of the virtual cluster the plugins install into.
    target: TestNamespace,
    admin: Client,
    webhook: kosmos_webhook::server::Running,
    _registration: Registration,
    stop_operator: tokio::sync::oneshot::Sender<()>,
    operator: tokio::task::JoinHandle<()>,
    rec: Arc<Record>,
    watch: tokio::task::JoinHandle<()>,
    faults: usize,
}

impl Stack {
    /// With `gated`, plugin "first" stays installing (its successStateCommand waits for the
    /// ConfigMap [`GATE`] in the virtual cluster) until [`Stack::open_gate`].
    async fn start(name: &'static str, prefix: &str, gated: bool) -> Result<Self> {
        if kosmos_e2e::uses_own_cluster() {
            bail!(
                "drill {name:?} stops and starts the local cluster's processes \
                 (e2e/cluster.sh stop-component); it cannot run against the cluster KUBECONFIG names"
            );
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        if std::env::var_os("RUST_LOG").is_some() {
            // The operator's and webhook's own logs, to see what a failing drill went through.
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_writer(std::io::stderr)
                .try_init();
        }
        // An earlier drill may have restarted what the controllers watch through.
        control_planes_recovered().await?;
        let admin = kosmos_e2e::host().await?;
        kosmos_e2e::install_crds(&admin).await?;
        let ns = TestNamespace::create(Cluster::Host, prefix).await?;
        let target = TestNamespace::create(Cluster::Virtual, prefix).await?;
        let n = ns.name().to_owned();

        // The real webhook.
        let certs_dir = tempfile::tempdir()?;
        let certs = kosmos_webhook::tls::generate(&["localhost".into(), webhook_host()], 1)?;
        kosmos_webhook::tls::write(&certs, certs_dir.path())?;
        let manifests = kosmos_e2e::e2e_dir().join("testdata/drills");
        let mut args = kosmos_webhook::server::ServeArgs {
            operator_user: OPERATOR_USER.to_owned(),
            watch_namespace: vec![n.clone()],
            // Its mark key in the drill's namespace, where the operator reads it.
            mark_key_secret: Some(kosmos_api::mark::DEFAULT_KEY_SECRET.to_owned()),
            namespace: n.clone(),
            allowed_host_path_prefixes: vec![manifests.display().to_string()],
            ..kosmos_webhook::server::ServeArgs::local(
                certs_dir.path().join("tls.crt"),
                certs_dir.path().join("tls.key"),
            )
        };
        args.listen = kosmos_e2e::webhook_listen_addr();
        let webhook = kosmos_webhook::server::start(&args, admin.clone()).await?;
        let state = webhook.state.clone();
        wait_for(
            "the webhook's caches to sync",
            Duration::from_secs(30),
            || {
                let synced = state.is_synced();
                async move { Ok(synced.then_some(())) }
            },
        )
        .await?;
        let registration = register_webhook(&admin, &n, webhook.addr.port(), &certs.ca_pem).await?;

        // Two plugins from hostPath manifests; the second depends on the first.
        let plugins: Api<VirtualClusterPlugin> = Api::namespaced(admin.clone(), &n);
        for plugin in PLUGINS {
            let depends = if plugin == "second" {
                json!([{"name": "first"}])
            } else {
                json!([])
            };
            let mut body = json!({
                "apiVersion": "kosmos.io/v1alpha1",
                "kind": "VirtualClusterPlugin",
                "metadata": {"name": plugin},
                "spec": {
                    "dependsOn": depends,
                    "timeoutSeconds": 60,
                    "pluginSources": {"yaml": {
                        "namespace": target.name(),
                        "path": {"hostPath": {"path": manifests.join(plugin).display().to_string()}},
                    }},
                },
            });
            if gated && plugin == "first" {
                body["spec"]["successStateCommand"] =
                    json!(format!("kubectl get configmap {GATE} -n {}", target.name()));
                body["spec"]["timeoutSeconds"] = json!(600);
            }
            let body: VirtualClusterPlugin = serde_json::from_value(body)?;
            plugins.create(&PostParams::default(), &body).await?;
        }

        // The operator's controller, acting as OPERATOR_USER.
        let operator_client = kosmos_e2e::client_as(
            Cluster::Host,
            &Identity::user(OPERATOR_USER).with_group("system:masters"),
        )
        .await?;
        let ctx = Arc::new(Context::new(
            operator_client,
            Arc::default(),
            Config {
                plan: kosmos_operator::plan::Settings {
                    // The faults last longer than three attempts; the drill is about retrying.
                    max_attempts: 1000,
                    backoff_base: Duration::from_secs(1),
                    backoff_max: Duration::from_secs(4),
                    ..Default::default()
                },
                executor_image: kosmos_e2e::executor_image(),
                executor_pod: Default::default(),
                readiness: ReadinessMode::External,
                concurrent_reconciles: 32,
                reconcile_debounce: Duration::from_millis(500),
                uninstall_on_delete: false,
                uninstall_timeout: Duration::from_secs(10),
                namespaces: vec![n.clone()],
                mark_key_secret: kosmos_api::mark::KeySecret {
                    namespace: n.clone(),
                    name: kosmos_api::mark::DEFAULT_KEY_SECRET.to_owned(),
                },
            },
        ));
        let (stop_operator, stopped) = tokio::sync::oneshot::channel::<()>();
        let operator = tokio::spawn(controller::run(
            ctx,
            Arc::new(AtomicBool::new(false)),
            async {
                let _ = stopped.await;
            },
        ));

        let rec = Arc::new(Record::default());
        let watch = tokio::spawn(watch_invariants(admin.clone(), n, rec.clone()));
        Ok(Self {
            name,
            ns,
            target,
            admin,
            webhook,
            _registration: registration,
            stop_operator,
            operator,
            rec,
            watch,
            faults: 0,
        })
    }

    fn n(&self) -> &str {
        self.ns.name()
    }

    /// Lets gated installs finish: creates the ConfigMap their successStateCommand waits for.
    async fn open_gate(&self) -> Result<()> {
        let virt = kosmos_e2e::virtual_cluster().await?;
        let gate: ConfigMap = serde_json::from_value(json!({"metadata": {"name": GATE}}))?;
        Api::<ConfigMap>::namespaced(virt, self.target.name())
            .create(&PostParams::default(), &gate)
            .await
            .context("opening the gate")?;
        Ok(())
    }

    fn vcs(&self) -> Api<VirtualCluster> {
        Api::namespaced(self.admin.clone(), self.n())
    }

    /// Creates VirtualClusters in `AllNodeReady` with both plugins, pointed at the virtual
    /// control plane.
    async fn create_vcs(&self, names: &[String]) -> Result<()> {
        let kubeconfig = kosmos_e2e::kubeconfig_yaml(Cluster::Virtual).await?;
        let kubeconfig = base64::engine::general_purpose::STANDARD.encode(kubeconfig);
        let enabled: Vec<_> = PLUGINS.iter().map(|p| json!({ "name": p })).collect();
        for name in names {
            let vc: VirtualCluster = serde_json::from_value(json!({
                "apiVersion": "kosmos.io/v1alpha1",
                "kind": "VirtualCluster",
                "metadata": {"name": name},
                "spec": {"kubeconfig": kubeconfig, "pluginSet": {"enabled": enabled}},
                // No status subresource (as in Kosmos): the status is written with the object.
                "status": {"phase": phase::ALL_NODE_READY},
            }))?;
            self.vcs()
                .create(&PostParams::default(), &vc)
                .await
                .with_context(|| format!("creating virtualcluster {name}"))?;
        }
        Ok(())
    }

    /// Waits until every named VirtualCluster is Completed, then checks its status: both
    /// plugins Succeeded by Jobs that really succeeded, progress 2/2, and the objects are in the
    /// virtual cluster.
    async fn wait_completed(&self, names: &[String]) -> Result<()> {
        let api = self.vcs();
        let last = Mutex::new(String::new());
        let done = wait_for(
            "every VirtualCluster Completed",
            rollout_bound(),
            || async {
                let mut pending = Vec::new();
                for name in names {
                    let vc = api.get(name).await?;
                    if vc.phase() != phase::COMPLETED {
                        pending.push(describe(&vc));
                    }
                }
                *last.lock().unwrap() = pending.join("\n");
                Ok(pending.is_empty().then_some(()))
            },
        )
        .await;
        if let Err(e) = done {
            bail!("{e:#}; not Completed:\n{}", last.lock().unwrap());
        }
        let jobs: Api<Job> = Api::namespaced(self.admin.clone(), self.n());
        for name in names {
            let vc = api.get(name).await?;
            let status = vc
                .status
                .as_ref()
                .context("a Completed VirtualCluster has a status")?;
            ensure!(
                status.plugin_progress.as_deref() == Some("2/2"),
                "{name}: pluginProgress {:?}",
                status.plugin_progress
            );
            for plugin in PLUGINS {
                let entry = status
                    .plugins
                    .iter()
                    .find(|e| e.name == plugin)
                    .with_context(|| format!("{name}: no status entry for plugin {plugin}"))?;
                ensure!(
                    entry.phase == PluginPhase::Succeeded,
                    "{name}/{plugin}: {entry:?}"
                );
                let job = jobs
                    .get(entry.job_name.as_deref().unwrap_or_default())
                    .await?;
                ensure!(
                    job_really_succeeded(&job),
                    "{name}/{plugin}: Job {} is not a marked, succeeded Job",
                    job.name_any()
                );
            }
        }
        let virt = kosmos_e2e::virtual_cluster().await?;
        let configmaps: Api<ConfigMap> = Api::namespaced(virt, self.target.name());
        for cm in ["drill-first", "drill-second"] {
            ensure!(
                configmaps.get_opt(cm).await?.is_some(),
                "ConfigMap {cm} is not in the virtual cluster's namespace {}",
                self.target.name()
            );
        }
        Ok(())
    }

    /// Deletes the VirtualClusters (with uninstall) and waits, within `bound`, until no
    /// VirtualCluster, executor Job or kubeconfig Secret is left.
    async fn delete_all_and_check_nothing_left(
        &self,
        names: &[String],
        bound: Duration,
    ) -> Result<()> {
        let api = self.vcs();
        for name in names {
            api.patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {
                    contract::UNINSTALL_ON_DELETE_ANNOTATION: "true"}}})),
            )
            .await?;
            api.delete(name, &DeleteParams::default()).await?;
        }
        let result = kosmos_e2e::wait_for_nothing_left(
            &self.admin,
            self.n(),
            names,
            bound,
            &self.rec.checks,
        )
        .await;
        if let Err(e) = result {
            let what = format!("{e:#}");
            self.rec.violation(what.clone());
            bail!(what);
        }
        Ok(())
    }

    /// Stops everything, prints the table line, and fails on any broken invariant.
    async fn finish(self, faults_text: &str) -> Result<()> {
        // The tests after this one (other binaries too) need working controllers.
        control_planes_recovered().await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.rec.stop.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.watch).await;
        // Succeeded entries seen while their Job could not be read: read them now.
        let jobs: Api<Job> = Api::namespaced(self.admin.clone(), self.ns.name());
        let unverified: Vec<String> = self
            .rec
            .unverified_jobs
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .collect();
        for name in unverified {
            verify_job(&jobs, &name, &self.rec).await;
        }
        let _ = self.stop_operator.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.operator).await;
        self.webhook.stop(Duration::from_secs(1)).await;
        let violations = self.rec.violations.lock().unwrap().clone();
        let checks = self.rec.checks.load(Ordering::Relaxed);
        println!(
            "drill-table | {} | {} ({faults_text}) | {checks} | {}",
            self.name,
            self.faults,
            violations.len()
        );
        ensure!(checks > 0, "{}: no invariant was checked", self.name);
        ensure!(
            violations.is_empty(),
            "{}: {} invariants broken:\n{}",
            self.name,
            violations.len(),
            violations.join("\n")
        );
        self.target.delete().await?;
        self.ns.delete().await
    }
}

fn describe(vc: &VirtualCluster) -> String {
    let plugins: Vec<String> = vc
        .status
        .iter()
        .flat_map(|s| s.plugins.iter())
        .map(|e| {
            format!(
                "{}={:?} attempts={} message={:?}",
                e.name, e.phase, e.attempts, e.message
            )
        })
        .collect();
    format!("{} {} {plugins:?}", vc.name_any(), vc.phase())
}

fn vc_names(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}-{i:02}")).collect()
}

/// Drill 4: the virtual cluster's apiserver stopped during installs, then gone for good while
/// its VirtualClusters are deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_virtual_apiserver_stopped_during_installs_and_gone_at_deletion() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut s = Stack::start(
        "virtual apiserver stopped during installs, gone at deletion",
        "drill-virtual",
        false,
    )
    .await?;
    let count = if full() { 10 } else { 2 };
    let names = vc_names("vc", count);
    let _restart = Restart(&["virtual-apiserver"]);

    // Down before the VirtualClusters exist, so no install can succeed while it lasts.
    s.rec.installs_impossible.store(true, Ordering::Relaxed);
    component("kill-component", "virtual-apiserver").await?;
    s.faults += 1;
    s.create_vcs(&names).await?;
    let api = s.vcs();
    let last = Mutex::new(String::new());
    let failing = wait_for(
        "every first plugin failed saying the virtual cluster is unreachable, and retried",
        rollout_bound(),
        || async {
            let mut all = true;
            let mut seen = Vec::new();
            for name in &names {
                let vc = api.get(name).await?;
                let first = vc
                    .status
                    .iter()
                    .flat_map(|s| s.plugins.iter())
                    .find(|e| e.name == "first");
                all &= first.is_some_and(|e| {
                    e.attempts >= 2
                        && e.phase != PluginPhase::Succeeded
                        && e.message.as_deref().is_some_and(|m| {
                            m.contains("virtual cluster API server https://")
                                && m.contains("is unreachable")
                        })
                });
                seen.push(describe(&vc));
            }
            *last.lock().unwrap() = seen.join("\n");
            Ok(all.then_some(()))
        },
    )
    .await;
    if let Err(e) = failing {
        bail!("{e:#}; seen:\n{}", last.lock().unwrap());
    }
    for name in &names {
        let vc = api.get(name).await?;
        ensure!(
            vc.phase() != phase::COMPLETED,
            "{name} Completed while the virtual API is down"
        );
        // "second" waits for "first": it never started.
        let second = vc
            .status
            .iter()
            .flat_map(|s| s.plugins.iter())
            .find(|e| e.name == "second");
        ensure!(
            second.is_none_or(|e| e.attempts == 0),
            "{name}: second started before first succeeded: {second:?}"
        );
    }

    // Back: everything completes without anyone touching it.
    s.rec.installs_impossible.store(false, Ordering::Relaxed);
    component("start-component", "virtual-apiserver").await?;
    s.wait_completed(&names).await?;

    // Gone for good: deleting (with uninstall) still finishes within the bound (the operator's
    // uninstall wait is 10 s here).
    component("kill-component", "virtual-apiserver").await?;
    s.faults += 1;
    s.delete_all_and_check_nothing_left(&names, Duration::from_secs(if full() { 180 } else { 90 }))
        .await?;
    component("start-component", "virtual-apiserver").await?;
    let text = format!("{count} VCs x 2 plugins, stopped during installs and at deletion");
    s.finish(&text).await
}

/// Drill 3: the host apiserver and etcd stopped and started again in the middle of a rollout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_host_apiserver_and_etcd_restarted_mid_rollout() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut s = Stack::start("host apiserver and etcd restarted", "drill-host", false).await?;
    let (count, restarts) = if full() { (10, 3) } else { (3, 1) };
    let names = vc_names("vc", count);
    // Started again in this order if the drill fails half-way: etcd first.
    let _restart = Restart(&["etcd", "host-apiserver"]);
    s.create_vcs(&names).await?;
    let jobs: Api<Job> = Api::namespaced(s.admin.clone(), s.n());
    for round in 0..restarts {
        // Mid-rollout: executor Jobs exist, and not every VirtualCluster is Completed.
        wait_for("an executor Job of this round", rollout_bound(), || async {
            let list = jobs.list(&ListParams::default()).await?;
            Ok((list.items.len() > round).then_some(()))
        })
        .await?;
        component("kill-component", "host-apiserver").await?;
        component("kill-component", "etcd").await?;
        s.faults += 2;
        tokio::time::sleep(Duration::from_secs(2)).await;
        component("start-component", "etcd").await?;
        component("start-component", "host-apiserver").await?;
    }
    s.wait_completed(&names).await?;
    s.delete_all_and_check_nothing_left(&names, rollout_bound())
        .await?;
    let text = format!("{count} VCs x 2 plugins, {restarts} restart(s) of both");
    s.finish(&text).await
}

/// The first plugin's entry of a VirtualCluster.
fn first_entry(vc: &VirtualCluster) -> Option<&kosmos_api::PluginStatus> {
    vc.status
        .iter()
        .flat_map(|s| s.plugins.iter())
        .find(|e| e.name == "first")
}

/// Drill 6, second half: the node gone (kubelet stopped, Node deleted) while executor pods run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_node_gone_while_executors_run() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut s = Stack::start("node gone mid-install", "drill-node", true).await?;
    let count = if full() { 3 } else { 1 };
    let names = vc_names("vc", count);
    let _restart = Restart(&["kubelet"]);
    s.create_vcs(&names).await?;

    // Mid-install: every first plugin's executor pod runs on the node, waiting at the gate.
    let api = s.vcs();
    let pods: Api<Pod> = Api::namespaced(s.admin.clone(), s.n());
    let last = Mutex::new(String::new());
    let running = wait_for(
        "every first plugin's executor pod running on the node",
        rollout_bound(),
        || async {
            let mut lost = BTreeMap::new();
            let mut seen = Vec::new();
            for name in &names {
                let vc = api.get(name).await?;
                seen.push(describe(&vc));
                let Some(job) = first_entry(&vc).and_then(|e| e.job_name.clone()) else {
                    continue;
                };
                let list = pods
                    .list(&ListParams::default().labels(&format!("job-name={job}")))
                    .await?;
                let pod = list.items.iter().find(|p| {
                    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                });
                if let Some(node) = pod.and_then(|p| p.spec.as_ref()?.node_name.clone()) {
                    lost.insert(name.clone(), (job, node));
                }
            }
            *last.lock().unwrap() = seen.join("\n");
            Ok((lost.len() == names.len()).then_some(lost))
        },
    )
    .await;
    let lost = match running {
        Ok(lost) => lost,
        Err(e) => bail!("{e:#}; seen:\n{}", last.lock().unwrap()),
    };
    let nodes: BTreeSet<String> = lost.values().map(|(_, node)| node.clone()).collect();

    // The node goes: its kubelet stops (its containers keep running, unseen) and the Node is
    // deleted, as when a dead machine is removed. Nothing can succeed until it is back.
    s.rec.installs_impossible.store(true, Ordering::Relaxed);
    component("kill-component", "kubelet").await?;
    let node_api: Api<Node> = Api::all(s.admin.clone());
    for node in &nodes {
        node_api
            .delete(node, &DeleteParams::default())
            .await
            .with_context(|| format!("deleting node {node}"))?;
    }
    s.faults += 1;

    // The pod garbage collector fails the orphaned pods (after its quarantine), their Jobs
    // fail, and the operator retries with a new attempt, which waits for a node.
    let retried = wait_for(
        "every first plugin retried with a new Job after its node went away",
        rollout_bound(),
        || async {
            let mut seen = Vec::new();
            let mut all = true;
            for (name, (job, _)) in &lost {
                let vc = api.get(name).await?;
                all &= first_entry(&vc).is_some_and(|e| {
                    e.attempts >= 2
                        && e.phase != PluginPhase::Succeeded
                        && e.job_name.as_ref().is_some_and(|j| j != job)
                });
                seen.push(describe(&vc));
            }
            *last.lock().unwrap() = seen.join("\n");
            Ok(all.then_some(()))
        },
    )
    .await;
    if let Err(e) = retried {
        bail!("{e:#}; seen:\n{}", last.lock().unwrap());
    }
    let jobs: Api<Job> = Api::namespaced(s.admin.clone(), s.n());
    for (name, (job, node)) in &lost {
        if let Some(job) = jobs.get_opt(job).await? {
            ensure!(
                job.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) == 0,
                "{name}: Job {} of the pod lost with node {node} counts a success",
                job.name_any()
            );
        }
    }

    // Back: the kubelet registers the node again; the gate opens; everything completes.
    component("start-component", "kubelet").await?;
    s.rec.installs_impossible.store(false, Ordering::Relaxed);
    s.open_gate().await?;
    s.wait_completed(&names).await?;
    for (name, (job, node)) in &lost {
        let vc = api.get(name).await?;
        let entry = first_entry(&vc).context("a Completed VirtualCluster has its entries")?;
        ensure!(
            entry.job_name.as_ref() != Some(job) && entry.attempts >= 2,
            "{name}: plugin first succeeded by the attempt lost with node {node}: {entry:?}"
        );
    }
    s.delete_all_and_check_nothing_left(&names, rollout_bound())
        .await?;
    let text = format!("{count} VC(s) x 2 plugins, kubelet stopped and Node deleted mid-install");
    s.finish(&text).await
}
