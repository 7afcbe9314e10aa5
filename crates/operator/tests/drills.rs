//! Fault drills: a rollout of VirtualClusters × 3 plugins against the real apiserver and job
//! controller while a fault is injected (the operator SIGKILLed at random moments, the leader of
//! two replicas killed, the webhook down / slow / answering garbage, executors killed
//! mid-install), with invariants checked on every watch event throughout, not only at the end:
//!
//! - no VirtualCluster is ever seen `Completed` while one of its plugins has not really been
//!   installed (a pod of a marked Job of that plugin ran to success);
//! - no plugin is ever seen `Succeeded` with a Job whose pod did not run to success (an unmarked
//!   Job, whose bare command fails, or an executor that was killed, is never counted);
//! - at most one live executor Job per (VirtualCluster, plugin, attempt);
//! - after deletion, no Job, kubeconfig Secret or finalizer is left, within a bound.
//!
//! `make test` runs each drill small; `make drills` sets `KOSMOS_DRILLS=full` (50 VirtualClusters
//! × 3 plugins, 20 kills). Each drill prints a line `drill-table | name | faults | checks |
//! failures` that `e2e/drills.sh` collects into the table of the README.
//!
//! Pods are finished by a kubelet stand-in (the pattern of the other operator tests): a pod of a
//! marked Job succeeds, a pod of an unmarked one fails as the bare command does.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, ensure};
use common::*;
use futures::StreamExt as _;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kosmos_api::{PluginPhase, VirtualCluster, contract, phase};
use kosmos_e2e::{TestNamespace, wait_for};
use kube::api::{DeleteParams, ListParams};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

const PLUGINS: [&str; 3] = ["cni", "dns", "proxy"];

/// `make drills` runs the full size.
fn full() -> bool {
    std::env::var("KOSMOS_DRILLS").is_ok_and(|v| v == "full")
}

/// How long a whole rollout may take: the full drill has 150 installs on a shared machine.
fn rollout_bound() -> Duration {
    if full() {
        Duration::from_secs(900)
    } else {
        Duration::from_secs(240)
    }
}

/// A small random source (xorshift), seeded from the clock; the seed is printed so a failing
/// drill can be rerun with `KOSMOS_DRILL_SEED`.
struct Rng(u64);

impl Rng {
    fn new(drill: &str) -> Self {
        let seed = std::env::var("KOSMOS_DRILL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(7)
                    | 1
            });
        eprintln!("drill {drill}: seed {seed}");
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A duration between `min` and `max` milliseconds.
    fn millis(&mut self, min: u64, max: u64) -> Duration {
        Duration::from_millis(min + self.next() % (max - min + 1))
    }
}

/// What the drill's stand-ins and watchers saw.
#[derive(Default)]
struct Record {
    /// (VirtualCluster, plugin) whose install really ran: a marked Job's pod succeeded.
    installed: Mutex<BTreeSet<(String, String)>>,
    /// Jobs whose pod the kubelet stand-in ran to success.
    succeeded_jobs: Mutex<BTreeSet<String>>,
    /// Jobs whose executor pod the drill deleted mid-install.
    killed_jobs: Mutex<BTreeSet<String>>,
    /// Kill the executor pod of every install Job's first attempt (the executor drill).
    kill_first_attempts: AtomicBool,
    /// Unmarked Jobs whose pod the stand-in failed.
    unmarked: AtomicUsize,
    violations: Mutex<Vec<String>>,
    checks: AtomicU64,
    /// Set when the drill is over: the background tasks end.
    stop: AtomicBool,
}

impl Record {
    fn violation(&self, what: String) {
        eprintln!("INVARIANT BROKEN: {what}");
        self.violations.lock().unwrap().push(what);
    }
}

fn label(job: &Job, key: &str) -> String {
    job.labels().get(key).cloned().unwrap_or_default()
}

fn annotation(job: &Job, key: &str) -> String {
    job.annotations().get(key).cloned().unwrap_or_default()
}

/// Plays the kubelet for executor pods: a marked Job's pod succeeds (after recording the
/// install), an unmarked one's fails, and in the executor drill the first attempt's pod is
/// deleted instead.
async fn kubelet(client: Client, ns: String, rec: Arc<Record>) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let selector = format!("{}=true", contract::EXECUTOR_LABEL);
    while !rec.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Ok(list) = pods.list(&ListParams::default().labels(&selector)).await else {
            continue;
        };
        for pod in list.items {
            let running = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_none_or(|p| p == "Pending" || p == "Running");
            if !running || pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let Some(job_name) = pod.labels().get("batch.kubernetes.io/job-name").cloned() else {
                continue;
            };
            let Ok(Some(job)) = jobs.get_opt(&job_name).await else {
                continue;
            };
            let vc = label(&job, contract::VIRTUAL_CLUSTER_LABEL);
            let plugin = label(&job, contract::PLUGIN_LABEL);
            let install = label(&job, contract::ACTION_LABEL) == "install";
            let marked = job
                .annotations()
                .contains_key(contract::INJECTED_ANNOTATION);
            let first = annotation(&job, contract::ATTEMPT_ANNOTATION) == "1";
            if marked && install && first && rec.kill_first_attempts.load(Ordering::Relaxed) {
                // The executor dies mid-install: its pod is deleted before it finishes.
                rec.killed_jobs.lock().unwrap().insert(job_name.clone());
                let _ = pods
                    .delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
                    .await;
                continue;
            }
            let outcome = if marked {
                if install {
                    rec.installed.lock().unwrap().insert((vc, plugin));
                }
                rec.succeeded_jobs.lock().unwrap().insert(job_name);
                ok()
            } else {
                rec.unmarked.fetch_add(1, Ordering::Relaxed);
                fail("/bin/sh: the Job was never mutated (no plugin-webhook mark)")
            };
            let _ = kosmos_e2e::finish_pod(&client, &ns, &pod.name_any(), &outcome).await;
        }
    }
}

/// Checks one VirtualCluster as seen in a watch event.
fn check_vc(vc: &VirtualCluster, rec: &Record) {
    rec.checks.fetch_add(1, Ordering::Relaxed);
    let name = vc.name_any();
    let enabled: Vec<String> = vc
        .spec
        .plugin_set
        .as_ref()
        .map(|s| s.enabled.iter().map(|r| r.name.clone()).collect())
        .unwrap_or_default();
    if vc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(phase::COMPLETED) {
        let installed = rec.installed.lock().unwrap();
        for plugin in &enabled {
            if !installed.contains(&(name.clone(), plugin.clone())) {
                rec.violation(format!(
                    "VirtualCluster {name} seen Completed while plugin {plugin} was never installed"
                ));
            }
        }
    }
    let succeeded = rec.succeeded_jobs.lock().unwrap();
    for entry in vc.status.iter().flat_map(|s| s.plugins.iter()) {
        if entry.phase == PluginPhase::Succeeded {
            let job = entry.job_name.clone().unwrap_or_default();
            if !succeeded.contains(&job) {
                rec.violation(format!(
                    "VirtualCluster {name}: plugin {} seen Succeeded with Job {job:?}, whose pod \
                     never ran to success",
                    entry.name
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

/// Watches VirtualClusters and Jobs of the namespace and checks the invariants on every event.
async fn watch_invariants(client: Client, ns: String, rec: Arc<Record>) {
    let vcs = watcher(
        Api::<VirtualCluster>::namespaced(client.clone(), &ns),
        watcher::Config::default(),
    )
    .map(|e| e.map(|e| (Some(e), None)));
    let jobs = watcher(
        Api::<Job>::namespaced(client.clone(), &ns),
        watcher::Config::default().labels(&format!("{}=true", contract::EXECUTOR_LABEL)),
    )
    .map(|e| e.map(|e| (None, Some(e))));
    let mut events = futures::stream::select(vcs.boxed(), jobs.boxed());
    // live Job name -> (VirtualCluster, plugin, attempt)
    let mut live: BTreeMap<String, (String, String, String)> = BTreeMap::new();
    while !rec.stop.load(Ordering::Relaxed) {
        let next = tokio::time::timeout(Duration::from_millis(500), events.next()).await;
        let Ok(Some(Ok((vc_event, job_event)))) = next else {
            continue;
        };
        if let Some(watcher::Event::Apply(vc) | watcher::Event::InitApply(vc)) = vc_event {
            check_vc(&vc, &rec);
        }
        match job_event {
            Some(watcher::Event::Apply(job) | watcher::Event::InitApply(job)) => {
                rec.checks.fetch_add(1, Ordering::Relaxed);
                let key = (
                    label(&job, contract::VIRTUAL_CLUSTER_LABEL),
                    label(&job, contract::PLUGIN_LABEL),
                    annotation(&job, contract::ATTEMPT_ANNOTATION),
                );
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
                        "{} live executor Jobs for VirtualCluster {} plugin {} attempt {}: {same:?}",
                        same.len(),
                        key.0,
                        key.1,
                        key.2
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

/// One drill: its namespace, stand-ins and watchers.
struct Drill {
    name: &'static str,
    ns: TestNamespace,
    client: Client,
    rec: Arc<Record>,
    webhook: MarkingWebhook,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    faults: usize,
    _sweep: FinalizerSweep,
}

impl Drill {
    async fn start(name: &'static str, prefix: &str) -> Result<Self> {
        let (ns, client, sweep) = setup(prefix).await?;
        let webhook = MarkingWebhook::start(&client, ns.name()).await?;
        for plugin in PLUGINS {
            let extra = if plugin == "proxy" {
                // One dependency, so ordering is exercised under the faults too.
                json!({ "dependsOn": [{"name": "dns"}] })
            } else {
                json!({})
            };
            apply_plugin(&client, ns.name(), plugin, yaml_plugin(extra)).await?;
        }
        let rec = Arc::new(Record::default());
        let tasks = vec![
            tokio::spawn(kubelet(client.clone(), ns.name().to_owned(), rec.clone())),
            tokio::spawn(watch_invariants(
                client.clone(),
                ns.name().to_owned(),
                rec.clone(),
            )),
        ];
        Ok(Self {
            name,
            ns,
            client,
            rec,
            webhook,
            tasks,
            faults: 0,
            _sweep: sweep,
        })
    }

    fn n(&self) -> &str {
        self.ns.name()
    }

    async fn create_vcs(&self, names: &[String]) -> Result<()> {
        let enabled: Vec<_> = PLUGINS.iter().map(|p| json!({ "name": p })).collect();
        for name in names {
            create_vc(
                &self.client,
                self.n(),
                name,
                phase::ALL_NODE_READY,
                json!({ "pluginSet": { "enabled": enabled } }),
            )
            .await?;
        }
        Ok(())
    }

    /// Waits until every named VirtualCluster is Completed.
    async fn wait_completed(&self, names: &[String]) -> Result<()> {
        let api: Api<VirtualCluster> = Api::namespaced(self.client.clone(), self.n());
        let names: BTreeSet<&String> = names.iter().collect();
        let last = Mutex::new(String::new());
        let result = wait_for(
            "every VirtualCluster Completed",
            rollout_bound(),
            || async {
                let list = api.list(&ListParams::default()).await?;
                let pending: Vec<String> = list
                    .items
                    .iter()
                    .filter(|vc| names.contains(&vc.name_any()) && vc.phase() != phase::COMPLETED)
                    .map(|vc| {
                        let plugins: Vec<String> = vc
                            .status
                            .iter()
                            .flat_map(|s| s.plugins.iter())
                            .map(|e| format!("{}={:?}", e.name, e.phase))
                            .collect();
                        format!("{} {} {plugins:?}", vc.name_any(), vc.phase())
                    })
                    .collect();
                *last.lock().unwrap() = pending.join("\n");
                Ok(pending.is_empty().then_some(()))
            },
        )
        .await;
        result.map_err(|e| anyhow::anyhow!("{e:#}; not Completed:\n{}", last.lock().unwrap()))
    }

    /// Deletes every VirtualCluster and checks that nothing is left within the bound.
    async fn delete_all_and_check_nothing_left(&self, names: &[String]) -> Result<()> {
        let api: Api<VirtualCluster> = Api::namespaced(self.client.clone(), self.n());
        for name in names {
            api.delete(name, &DeleteParams::default()).await?;
        }
        self.wait_nothing_left(names).await
    }

    async fn wait_nothing_left(&self, names: &[String]) -> Result<()> {
        let result = kosmos_e2e::wait_for_nothing_left(
            &self.client,
            self.n(),
            names,
            rollout_bound(),
            &self.rec.checks,
        )
        .await;
        if let Err(e) = result {
            let what = format!("{e:#}");
            self.rec.violation(what.clone());
            anyhow::bail!(what);
        }
        Ok(())
    }

    /// Stops the watchers, prints the table line, and fails on any broken invariant.
    async fn finish(self, faults_text: &str) -> Result<()> {
        // A last look after everything settled.
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.rec.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        let violations = self.rec.violations.lock().unwrap().clone();
        let checks = self.rec.checks.load(Ordering::Relaxed);
        println!(
            "drill-table | {} | {} ({}) | {checks} | {}",
            self.name,
            self.faults,
            faults_text,
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
        self.webhook.stop().await?;
        self.ns.delete().await
    }
}

fn vc_names(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("vc-{i:02}")).collect()
}

/// The operator SIGKILLed at random moments (creating Jobs, writing status, deleting) and
/// restarted each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_operator_killed_at_random_moments() -> Result<()> {
    let mut d = Drill::start("operator SIGKILLed and restarted", "drill-kill").await?;
    let mut rng = Rng::new(d.name);
    let (count, rollout_kills, deletion_kills) = if full() { (50, 15, 5) } else { (4, 3, 1) };
    let names = vc_names(count);
    let mut op = Operator::start(d.n(), &[]).await?;
    d.create_vcs(&names).await?;
    for _ in 0..rollout_kills {
        tokio::time::sleep(rng.millis(300, 4000)).await;
        op.kill().await?;
        d.faults += 1;
        tokio::time::sleep(rng.millis(0, 1000)).await;
        op = Operator::start(d.n(), &[]).await?;
    }
    d.wait_completed(&names).await?;
    let api: Api<VirtualCluster> = Api::namespaced(d.client.clone(), d.n());
    for name in &names {
        api.delete(name, &DeleteParams::default()).await?;
    }
    for _ in 0..deletion_kills {
        tokio::time::sleep(rng.millis(100, 2000)).await;
        op.kill().await?;
        d.faults += 1;
        tokio::time::sleep(rng.millis(0, 1000)).await;
        op = Operator::start(d.n(), &[]).await?;
    }
    d.wait_nothing_left(&names).await?;
    drop(op);
    let text = format!("{count} VCs x 3 plugins, during rollout and deletion");
    d.finish(&text).await
}

/// Two replicas; the one holding the Lease is SIGKILLed, again and again, and replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_leader_of_two_replicas_killed() -> Result<()> {
    let mut d = Drill::start("leader of two replicas killed", "drill-leader").await?;
    let mut rng = Rng::new(d.name);
    let (count, kills) = if full() { (20, 6) } else { (3, 2) };
    let names = vc_names(count);
    let mut replicas = vec![
        Operator::start(d.n(), &[]).await?,
        Operator::start(d.n(), &[]).await?,
    ];
    d.create_vcs(&names).await?;
    let leases: Api<Lease> = Api::namespaced(d.client.clone(), d.n());
    for _ in 0..kills {
        tokio::time::sleep(rng.millis(500, 3000)).await;
        let holder = wait_for("a replica to hold the Lease", STEP, || async {
            let lease = leases.get_opt("virtual-cluster-operator").await?;
            let holder = lease
                .and_then(|l| l.spec)
                .and_then(|s| s.holder_identity)
                .unwrap_or_default();
            Ok(replicas.iter().position(|op| {
                holder == format!("virtual-cluster-operator-{}", op.pid().unwrap_or(0))
            }))
        })
        .await?;
        replicas.remove(holder).kill().await?;
        d.faults += 1;
        replicas.push(Operator::start(d.n(), &[]).await?);
    }
    d.wait_completed(&names).await?;
    d.delete_all_and_check_nothing_left(&names).await?;
    drop(replicas);
    let text = format!("{count} VCs x 3 plugins");
    d.finish(&text).await
}

/// The webhook down (the registration stays, the server is gone), then slow (9 s), then
/// answering garbage: nothing completes while Jobs cannot be marked, the condition says why, and
/// everything completes afterwards without anyone touching it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_webhook_down_slow_and_answering_garbage() -> Result<()> {
    let mut d = Drill::start("webhook down, slow (9 s), garbage", "drill-webhook").await?;
    let count = if full() { 10 } else { 2 };
    let op = Operator::start(d.n(), &["--max-backoff-seconds", "4"]).await?;
    let api: Api<VirtualCluster> = Api::namespaced(d.client.clone(), d.n());
    let unavailable = |what: &'static str, names: Vec<String>| {
        let api = api.clone();
        async move {
            wait_for(what, STEP, || async {
                let mut all = true;
                for name in &names {
                    let vc = api.get(name).await?;
                    let cond = condition(&vc, kosmos_api::condition::WEBHOOK_MUTATING);
                    all &= cond.is_some_and(|(status, reason, message)| {
                        status == "False" && reason == "WebhookUnavailable" && !message.is_empty()
                    });
                }
                Ok(all.then_some(()))
            })
            .await
        }
    };

    // Down.
    d.webhook.pause().await;
    d.faults += 1;
    let down = vc_names(count);
    d.create_vcs(&down).await?;
    unavailable(
        "WebhookMutating=False/WebhookUnavailable while down",
        down.clone(),
    )
    .await?;
    for name in &down {
        ensure!(api.get(name).await?.phase() != phase::COMPLETED);
    }
    d.webhook.resume().await?;
    d.wait_completed(&down).await?;

    // Slow: 9 s for every review, inside the registration's 10 s.
    d.webhook.set_mode(WebhookMode::Slow);
    d.faults += 1;
    let slow: Vec<String> = (0..count).map(|i| format!("slow-{i:02}")).collect();
    d.create_vcs(&slow).await?;
    d.wait_completed(&slow).await?;

    // Garbage.
    d.webhook.set_mode(WebhookMode::Garbage);
    d.faults += 1;
    let garbage: Vec<String> = (0..count).map(|i| format!("garbage-{i:02}")).collect();
    d.create_vcs(&garbage).await?;
    unavailable(
        "WebhookMutating=False while it answers garbage",
        garbage.clone(),
    )
    .await?;
    d.webhook.set_mode(WebhookMode::Normal);
    d.wait_completed(&garbage).await?;

    let all: Vec<String> = [down, slow, garbage].concat();
    d.delete_all_and_check_nothing_left(&all).await?;
    drop(op);
    let text = format!("{} VCs x 3 plugins", all.len());
    d.finish(&text).await
}

/// Every install's first executor is killed mid-install (its pod deleted): the attempt fails,
/// is retried, and is never counted as succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_executor_killed_mid_install() -> Result<()> {
    let mut d = Drill::start("executor killed mid-install", "drill-executor").await?;
    let count = if full() { 10 } else { 2 };
    let names = vc_names(count);
    d.rec.kill_first_attempts.store(true, Ordering::Relaxed);
    let op = Operator::start(d.n(), &[]).await?;
    d.create_vcs(&names).await?;
    d.wait_completed(&names).await?;
    let api: Api<VirtualCluster> = Api::namespaced(d.client.clone(), d.n());
    for name in &names {
        let vc = api.get(name).await?;
        for plugin in PLUGINS {
            let e = entry(&vc, plugin).unwrap();
            ensure!(
                e.attempts >= 2,
                "{name}/{plugin}: succeeded at attempt {} although attempt 1 was killed",
                e.attempts
            );
        }
    }
    d.faults = d.rec.killed_jobs.lock().unwrap().len();
    ensure!(
        d.faults >= count * PLUGINS.len(),
        "only {} executors killed",
        d.faults
    );
    d.delete_all_and_check_nothing_left(&names).await?;
    drop(op);
    let text = format!("{count} VCs x 3 plugins, every first attempt");
    d.finish(&text).await
}

/// The checks can fail: a VirtualCluster seen Completed before an install ran, and a plugin
/// Succeeded with a Job whose pod never succeeded, are both reported.
#[test]
fn the_invariant_checks_catch_what_they_guard() {
    let rec = Record::default();
    let mut vc: VirtualCluster = serde_json::from_value(json!({
        "apiVersion": "kosmos.io/v1alpha1",
        "kind": "VirtualCluster",
        "metadata": { "name": "vc-00" },
        "spec": { "pluginSet": { "enabled": [{"name": "cni"}, {"name": "dns"}] } },
        "status": {
            "phase": "Completed",
            "plugins": [
                {"name": "cni", "phase": "Succeeded", "jobName": "job-cni", "attempts": 1},
                {"name": "dns", "phase": "Succeeded", "jobName": "job-dns", "attempts": 1},
            ],
        },
    }))
    .unwrap();
    rec.installed
        .lock()
        .unwrap()
        .insert(("vc-00".into(), "cni".into()));
    rec.succeeded_jobs.lock().unwrap().insert("job-cni".into());
    check_vc(&vc, &rec);
    let violations = rec.violations.lock().unwrap().clone();
    assert_eq!(violations.len(), 2, "{violations:?}");
    assert!(violations[0].contains("plugin dns was never installed"));
    assert!(violations[1].contains("Job \"job-dns\""));

    // Once the install really ran, the same object passes.
    rec.violations.lock().unwrap().clear();
    rec.installed
        .lock()
        .unwrap()
        .insert(("vc-00".into(), "dns".into()));
    rec.succeeded_jobs.lock().unwrap().insert("job-dns".into());
    vc.metadata.resource_version = Some("2".into());
    check_vc(&vc, &rec);
    assert!(rec.violations.lock().unwrap().is_empty());
}
