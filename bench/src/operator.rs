//! The operator's scale run: N VirtualClusters × M plugins flip to AllNodeReady at once against
//! the local host apiserver. Measured: time until all N×M executor Jobs exist, until all
//! VirtualClusters are Completed, the apiserver's request counts (from its /metrics), and the
//! operator's RSS and CPU. Against, in the same run and alternating: the ceiling (a plain client
//! creating the same Jobs, one task per VirtualCluster as the operator's controller does) and
//! the peer (k3s's helm-controller turning N×M HelmCharts into its Jobs). Every target's pods
//! are steered to a node without a kubelet ([`FakeNode`]) whose stand-in finishes them; the real
//! scheduler binds them and the real job controller completes the Jobs.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::batch::v1::Job;
use kosmos_api::contract::{self, Action};
use kosmos_api::{VirtualCluster, VirtualClusterPlugin};
use kosmos_e2e::{Cluster, TestNamespace};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt as _};
use serde_json::{Value, json};

use crate::fake_node::FakeNode;
use crate::machine::Machine;
use crate::proc::{self, Server};
use crate::stats::Spread;

/// The executor image of every target's Jobs: never pulled (the pods run on the fake node).
const EXECUTOR_IMAGE: &str = "registry.invalid/kosmos/executor:bench";

/// Flags of `kosmos-bench operator`.
#[derive(Clone, Debug, clap::Args)]
pub struct OperatorArgs {
    /// A small run: 20 VirtualClusters × 3 plugins, 2 rounds.
    #[arg(long)]
    pub quick: bool,
    /// VirtualClusters.
    #[arg(long)]
    pub virtual_clusters: Option<usize>,
    /// Plugins each VirtualCluster installs.
    #[arg(long)]
    pub plugins: Option<usize>,
    /// Rounds.
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Seconds of the idle measurement after everything is Completed.
    #[arg(long)]
    pub idle_seconds: Option<u64>,
    /// Give up on one target after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout_seconds: u64,
    /// Where the JSON and Markdown go.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
}

/// One target's figures in one round.
#[derive(Clone, Debug, Default, serde::Serialize)]
struct Outcome {
    round: usize,
    target: String,
    /// Seconds from the flip until the last Job was seen.
    jobs_created_s: f64,
    /// Seconds until all were done (VirtualClusters Completed; Jobs Complete for the others);
    /// NaN (null in the JSON) when that took longer than the run's timeout.
    completed_s: f64,
    /// Jobs per second until all existed.
    jobs_per_s: f64,
    /// Mutating requests the apiserver served during the run, per VirtualCluster, by
    /// `VERB resource[/subresource]`, the driver's own flips taken out.
    writes_per_vc: BTreeMap<String, f64>,
    /// All requests per VirtualCluster, reads and watches included.
    requests_per_vc: f64,
    /// Reads (GET, LIST) per VirtualCluster by `VERB resource`, every client's (leases out):
    /// what each reconciliation costs the apiserver besides its writes.
    reads_per_vc: BTreeMap<String, f64>,
    /// Events created during the run per VirtualCluster, by reporting controller. The control
    /// plane's (job controller, scheduler) are taken out of `writes_per_vc`.
    events_per_vc: BTreeMap<String, f64>,
    /// The operator's reconciliations after an edit of a plugin no VirtualCluster uses, and
    /// after an edit of one that every VirtualCluster uses, and in as long without an edit
    /// (resyncs), each over [`WAKE_WINDOW`] (the operator only).
    reconciles_after_unused_plugin_edit: f64,
    reconciles_after_used_plugin_edit: f64,
    reconciles_without_edit: f64,
    /// Largest RSS seen of the controller process, KiB (0 for the plain client: it runs in
    /// the driver).
    rss_kib: u64,
    /// CPU seconds of the controller process during the run.
    cpu_s: f64,
    /// CPU seconds each local control-plane component ([`CONTROL_PLANE_PROCESSES`]) spent from
    /// the flip until every Job existed: what the target's way of asking costs the apiserver,
    /// measured in work rather than in wall time on a shared machine. Empty against a user's
    /// own cluster.
    control_plane_cpu_s: BTreeMap<String, f64>,
    /// Connections the webhook closed at once during the round because its `--max-connections`
    /// were open (each a failed create the target must retry); NaN (null) where the target's
    /// Jobs do not go through it.
    webhook_connections_refused: f64,
    /// After everything finished: the controller's CPU share and the apiserver's request rate.
    idle_cpu_percent: f64,
    idle_requests_per_s: f64,
    /// The machine's one-minute load average when the round started (others share the cores).
    load_average: f64,
}

/// The local control plane's processes whose CPU a round counts (`e2e/cluster.sh`'s names).
const CONTROL_PLANE_PROCESSES: &[&str] = &[
    "host-apiserver",
    "etcd",
    "host-controller-manager",
    "scheduler",
];

/// CPU seconds so far of each control-plane process that can be found, and of the webhook the
/// target's Jobs go through, if any.
fn control_plane_cpu(webhook: Option<&RegisteredWebhook>) -> BTreeMap<String, f64> {
    CONTROL_PLANE_PROCESSES
        .iter()
        .filter_map(|name| Some((*name, kosmos_e2e::local_component_pid(name)?)))
        .chain(webhook.map(|w| ("plugin-webhook", w.server.pid())))
        .filter_map(|(name, pid)| Some((name.to_owned(), proc::cpu_seconds(pid).ok()?)))
        .collect()
}

/// Runs the scale benchmark and writes `operator.json` and `operator.md`.
pub async fn run(args: &OperatorArgs) -> Result<()> {
    let n = args
        .virtual_clusters
        .unwrap_or(if args.quick { 20 } else { 1000 });
    let m = args.plugins.unwrap_or(if args.quick { 3 } else { 5 });
    let rounds = args.rounds.unwrap_or(if args.quick { 2 } else { 3 });
    let idle = Duration::from_secs(args.idle_seconds.unwrap_or(if args.quick { 5 } else { 20 }));
    let timeout = Duration::from_secs(args.timeout_seconds);
    let machine = Machine::now();
    std::fs::create_dir_all(&args.out)?;
    let operator_binary = crate::webhook::sibling("virtual-cluster-operator")?;
    let helm_controller = match std::env::var("BENCH_HELM_CONTROLLER") {
        Ok(v) if v.starts_with("unavailable:") => Err(v["unavailable:".len()..].to_owned()),
        Ok(v) if !v.is_empty() => Ok(PathBuf::from(v)),
        _ => Err("BENCH_HELM_CONTROLLER is not set: run through `make bench`".to_owned()),
    };
    let client = kosmos_e2e::host().await?;
    kosmos_e2e::install_crds(&client).await?;
    let kubeconfig = kosmos_e2e::kubeconfig_yaml(Cluster::Virtual).await?;
    let node = FakeNode::register(&client).await?;

    let mut targets = vec!["operator", "ceiling"];
    if helm_controller.is_ok() {
        targets.push("peer");
    }
    let mut outcomes = Vec::new();
    for round in 0..rounds {
        for i in 0..targets.len() {
            let target = targets[(i + round) % targets.len()];
            eprintln!(
                "operator bench: round {}/{rounds}, {target}, {n} × {m}",
                round + 1
            );
            let namespace =
                TestNamespace::create(Cluster::Host, &format!("bench-{target}")).await?;
            node.steer(namespace.name()).await?;
            let setting = Setting {
                node: &node,
                client: &client,
                ns: namespace.name(),
                n,
                m,
                kubeconfig: &kubeconfig,
                idle,
                timeout,
                out: &args.out,
            };
            let mut outcome = match target {
                "operator" => run_operator(&setting, &operator_binary).await,
                "ceiling" => run_ceiling(&setting).await,
                _ => {
                    let binary = helm_controller
                        .as_ref()
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    run_peer(&setting, binary).await
                }
            }
            .with_context(|| format!("{target}, round {}", round + 1))?;
            outcome.round = round;
            outcome.target = target.to_owned();
            eprintln!(
                "operator bench: {target}: jobs in {:.2} s, done in {:.2} s (load average {:.1})",
                outcome.jobs_created_s, outcome.completed_s, outcome.load_average
            );
            outcomes.push(outcome);
            // After every round of every target: a full-size run takes most of an hour, and a
            // later failure must not lose what was measured.
            let report = json!({
                "machine": machine,
                "config": {"virtual_clusters": n, "plugins": m, "rounds": rounds, "idle_seconds": idle.as_secs()},
                "peer_unavailable": helm_controller.as_ref().err(),
                "summary": summarize(&outcomes, &targets),
                "outcomes": outcomes,
            });
            std::fs::write(
                args.out.join("operator.json"),
                serde_json::to_vec_pretty(&report)?,
            )?;
            std::fs::write(args.out.join("operator.md"), markdown(&report))?;
            let name = namespace.name().to_owned();
            // The kubelet's part goes on through the teardown: pods a target's backlog bound
            // after its round are removed as a kubelet would (the peer's left the namespace
            // there for good until 2026-12-07).
            let stand_in = node.finish_pods(&name);
            namespace.delete().await?;
            let gone = wait_gone(&client, &name, timeout).await;
            stand_in.abort();
            gone?;
        }
    }
    node.remove().await?;
    eprintln!(
        "operator bench: wrote {}/operator.json and operator.md",
        args.out.display()
    );
    Ok(())
}

/// Plugins `bench-0..m`: manifests fetched from a `uri` with their digest. Not the
/// walk-through's claim (`pvPath`): a pod that mounts a claim schedules only where the claim's
/// volume is, and the local provisioner makes volumes only on the real node (with a helper pod
/// that a node without a kubelet never runs); a `hostPath` pins the pod to the node it names.
fn plugins(ns: &str, m: usize) -> Result<Vec<VirtualClusterPlugin>> {
    (0..m)
        .map(|i| {
            Ok(serde_json::from_value(json!({
                "apiVersion": "kosmos.io/v1alpha1",
                "kind": "VirtualClusterPlugin",
                "metadata": {"name": format!("bench-{i}"), "namespace": ns},
                "spec": {"pluginSources": {"yaml": {"path": {
                    "uri": format!("https://plugins.example.com/bench-{i}.yaml"),
                    "sha256": format!("{:064x}", i + 1),
                }}}}
            }))?)
        })
        .collect()
}

/// The VirtualClusters, waiting in phase Initialized.
fn waiting_vcs(
    ns: &str,
    n: usize,
    plugins: &[VirtualClusterPlugin],
    kubeconfig: &str,
) -> Result<Vec<VirtualCluster>> {
    let names: Vec<String> = plugins.iter().map(|p| p.name_any()).collect();
    let mut vcs = crate::fixture::virtual_clusters(ns, n, &names, kubeconfig)?;
    for vc in &mut vcs {
        vc.status = Some(serde_json::from_value(json!({"phase": "Initialized"}))?);
    }
    Ok(vcs)
}

/// Reporters of the control plane's events about the Jobs and pods of every target.
const CONTROL_PLANE: [&str; 2] = ["job-controller", "default-scheduler"];

/// Waits until namespace `ns` is gone: tearing down thousands of Jobs, pods and events keeps the
/// garbage collector and the apiserver busy for minutes, and a round measured meanwhile would
/// pay for the round before it (the ceiling after the operator's round did, until 2026-12-07).
async fn wait_gone(client: &Client, ns: &str, timeout: Duration) -> Result<()> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let start = Instant::now();
    while let Some(namespace) = api.get_opt(ns).await? {
        if start.elapsed() > timeout {
            // The namespace controller says what it could not delete yet.
            let holding: Vec<String> = namespace
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .into_iter()
                .filter(|c| c.status == "True")
                .filter_map(|c| c.message)
                .collect();
            bail!(
                "namespace {ns} still exists {timeout:?} after its deletion: {}",
                holding.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!(
        "operator bench: namespace {ns} gone after {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Events of namespace `ns` by reporting controller (the source component of core events).
async fn events_by_reporter(client: &Client, ns: &str) -> Result<BTreeMap<String, f64>> {
    use k8s_openapi::api::events::v1::Event;
    let list = Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .with_context(|| format!("listing the events of {ns}"))?;
    let mut counts = BTreeMap::new();
    for event in list.items {
        let reporter = event
            .reporting_controller
            .filter(|r| !r.is_empty())
            .or_else(|| event.deprecated_source.and_then(|s| s.component))
            .unwrap_or_else(|| "unknown".to_owned());
        *counts.entry(reporter).or_default() += 1.0;
    }
    Ok(counts)
}

/// Request counts of the apiserver by `VERB resource[/subresource]`.
async fn request_counts(client: &Client) -> Result<BTreeMap<String, f64>> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = client
        .request_text(request)
        .await
        .context("reading the apiserver's /metrics")?;
    let mut counts = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let Some((labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let label = |name: &str| -> String {
            labels
                .split(&format!("{name}=\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or_default()
                .to_owned()
        };
        let (verb, resource, sub) = (label("verb"), label("resource"), label("subresource"));
        let key = if sub.is_empty() {
            format!("{verb} {resource}")
        } else {
            format!("{verb} {resource}/{sub}")
        };
        *counts.entry(key).or_default() += value.parse::<f64>().unwrap_or_default();
    }
    Ok(counts)
}

fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or_default()))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

const WRITES: [&str; 5] = ["POST", "PUT", "PATCH", "DELETE", "APPLY"];

/// Writes per VirtualCluster from a request delta, excluding what the driver and the kubelet
/// stand-in wrote themselves (`own` by key) and the control plane's own bookkeeping.
fn writes_per_vc(
    d: &BTreeMap<String, f64>,
    own: &BTreeMap<String, f64>,
    n: usize,
) -> BTreeMap<String, f64> {
    d.iter()
        .filter(|(k, _)| WRITES.iter().any(|w| k.starts_with(w)))
        // Leases and events of every component tick regardless; pods and Job status are the job
        // controller's and the stand-in's.
        .filter(|(k, _)| {
            !k.contains("leases")
                && !k.contains(" pods")
                && !k.contains("jobs/status")
                && !k.contains("endpointslices")
        })
        .map(|(k, v)| {
            (
                k.clone(),
                (v - own.get(k).copied().unwrap_or_default()) / n as f64,
            )
        })
        .filter(|(_, v)| *v > 0.001)
        .collect()
}

/// Reads per VirtualCluster from a request delta (leases out: every component renews its own).
fn reads_per_vc(d: &BTreeMap<String, f64>, n: usize) -> BTreeMap<String, f64> {
    d.iter()
        .filter(|(k, _)| (k.starts_with("GET ") || k.starts_with("LIST ")) && !k.contains("leases"))
        .map(|(k, v)| (k.clone(), v / n as f64))
        .filter(|(_, v)| *v > 0.01)
        .collect()
}

/// Waits until `total` Jobs exist in `api`'s namespace, watching them (a poll would add its
/// interval to a round of well under a second); returns the elapsed time since `start`.
async fn wait_jobs(api: &Api<Job>, start: Instant, timeout: Duration, total: usize) -> Result<f64> {
    let mut seen = HashSet::new();
    let mut stream =
        std::pin::pin!(watcher(api.clone(), watcher::Config::default()).applied_objects());
    let deadline = tokio::time::Instant::from_std(start + timeout);
    while seen.len() < total {
        match tokio::time::timeout_at(deadline, stream.try_next()).await {
            Ok(Ok(Some(job))) => {
                seen.insert(job.name_any());
            }
            Ok(Ok(None)) => bail!("the watch of Jobs ended"),
            Ok(Err(e)) => return Err(e).context("watching Jobs"),
            Err(_) => bail!(
                "not all {total} Jobs created within {timeout:?} ({} seen)",
                seen.len()
            ),
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

fn complete(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Complete" && c.status == "True")
        })
}

/// Samples a process's RSS every 200 ms until dropped.
struct Sampler {
    max_kib: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(pid: u32) -> Self {
        let max_kib = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let max = max_kib.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Ok(kib) = proc::status_field(pid, "VmRSS") {
                    max.fetch_max(kib, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self { max_kib, task }
    }

    fn max(&self) -> u64 {
        self.max_kib.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Flips every VirtualCluster to AllNodeReady (no status subresource: the status is written
/// with the object, as Kosmos does), all at once, as the plain client starts all its tasks.
async fn flip(client: &Client, ns: &str, n: usize) -> Result<()> {
    let api: Api<VirtualCluster> = Api::namespaced(client.clone(), ns);
    futures::future::try_join_all((0..n).map(|i| {
        let api = api.clone();
        async move {
            api.patch(
                &format!("tenant-{i:04}"),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"phase": "AllNodeReady"}})),
            )
            .await
            .map(|_| ())
        }
    }))
    .await?;
    Ok(())
}

/// The real webhook, serving executor Jobs of the bench namespace, as the operator needs it: an
/// executor Job that comes back unmutated is deleted and retried, so nothing would complete.
struct RegisteredWebhook {
    name: String,
    server: Server,
    /// Its admin port (/metrics).
    admin: std::net::SocketAddr,
    _certs: tempfile::TempDir,
}

impl RegisteredWebhook {
    /// `plugin_webhook_connections_refused_total` so far.
    fn connections_refused(&self) -> Result<f64> {
        let text = crate::machine::http_get(self.admin, "/metrics")?;
        metric_value(&text, "plugin_webhook_connections_refused_total")
            .context("the webhook's /metrics has no plugin_webhook_connections_refused_total")
    }
}

impl Drop for RegisteredWebhook {
    fn drop(&mut self) {
        kosmos_e2e::delete_webhook_configuration_on_drop(&self.name);
    }
}

async fn register_webhook(
    client: &Client,
    ns: &str,
    out: &std::path::Path,
) -> Result<RegisteredWebhook> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    // The operator runs with the same kubeconfig as this driver: its user is ours.
    let review: SelfSubjectReview = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .context("asking the apiserver who we are")?;
    let user = review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .context("the apiserver did not say who we are")?;
    // The apiserver runs in the cluster's network namespace: it reaches this machine only at
    // the veth address the cluster names (127.0.0.1 there is its own loopback).
    let host = kosmos_e2e::webhook_host();
    let certs = tempfile::tempdir()?;
    let generated =
        kosmos_webhook::tls::generate(&["localhost".into(), "127.0.0.1".into(), host.clone()], 30)?;
    kosmos_webhook::tls::write(&generated, certs.path())?;
    let port = proc::free_port()?;
    let admin: std::net::SocketAddr = ([127, 0, 0, 1], proc::free_port()?).into();
    let mut command = std::process::Command::new(crate::webhook::sibling("plugin-webhook")?);
    command
        .arg("serve")
        .arg(format!("--listen={host}:{port}"))
        .arg(format!("--admin-listen={admin}"))
        .arg("--tls-cert")
        .arg(certs.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(certs.path().join("tls.key"))
        .arg(format!("--watch-namespace={ns}"))
        // Its mark key Secret in the bench's namespace, where the operator reads it.
        .arg(format!("--namespace={ns}"))
        .arg(format!("--operator-user={user}"))
        .env(
            "KUBECONFIG",
            kosmos_e2e::kubeconfig_path(Cluster::Host).await?,
        );
    let mut server = Server::start("plugin-webhook", command, &out.join("operator-webhook.log"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while crate::machine::http_get_status(admin, "/readyz").ok() != Some(200) {
        server.check_alive()?;
        if Instant::now() > deadline {
            bail!("plugin-webhook did not become ready in 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let name = format!("kosmos-bench-{ns}");
    let ca = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        &generated.ca_pem,
    );
    let config: k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration =
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "webhooks": [{
                "name": "executor.plugin.kosmos.io",
                "clientConfig": {"url": format!("https://{host}:{port}/mutate"), "caBundle": ca},
                "rules": [{"apiGroups": ["batch"], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["jobs"]}],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                "objectSelector": {"matchExpressions": [{"key": contract::EXECUTOR_LABEL, "operator": "Exists"}]},
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 10
            }]
        }))?;
    let configs: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        Api::all(client.clone());
    configs
        .create(&PostParams::default(), &config)
        .await
        .context("registering the webhook")?;
    let registered = RegisteredWebhook {
        name,
        server,
        admin,
        _certs: certs,
    };
    // The apiserver picks a new configuration up a moment later: a dry-run executor Job without
    // its plugin label comes back denied by our webhook once it does.
    let probe: Job = serde_json::from_value(json!({
        "metadata": {"name": "webhook-probe", "labels": {contract::EXECUTOR_LABEL: "true"}},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "x", "image": "registry.invalid/x"}]}}}
    }))?;
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let params = PostParams {
        dry_run: true,
        field_manager: None,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match jobs.create(&params, &probe).await {
            Err(kube::Error::Api(e)) if e.message.contains(contract::PLUGIN_LABEL) => break,
            _ if Instant::now() > deadline => {
                bail!("the apiserver did not call the webhook within 60 s")
            }
            _ => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
    Ok(registered)
}

/// What every round of every target shares: the namespace, the size, the limits.
struct Setting<'a> {
    node: &'a FakeNode,
    client: &'a Client,
    ns: &'a str,
    n: usize,
    m: usize,
    kubeconfig: &'a str,
    idle: Duration,
    timeout: Duration,
    out: &'a std::path::Path,
}

/// When a target's round is over.
#[derive(Clone, Copy)]
enum Finish {
    /// Every VirtualCluster is Completed (the operator).
    VirtualClustersCompleted,
    /// Every Job has completed (the plain client, helm-controller).
    JobsComplete,
}

/// The one measured round, the same for every target: with the kubelet stand-in running, the
/// clock starts, `work` starts the N×M installs (the flip, the plain client's creates, the
/// HelmCharts) while the driver counts the Jobs, then waits for `finish`. Request counts cover
/// the whole round; `own` names the driver's own writes, taken out of the target's. With a
/// `process` (a controller), its RSS and CPU are sampled and its idle figures taken after.
async fn measure(
    setting: &Setting<'_>,
    mut process: Option<&mut Server>,
    webhook: Option<&RegisteredWebhook>,
    own: BTreeMap<String, f64>,
    work: impl std::future::Future<Output = Result<()>>,
    finish: Finish,
) -> Result<Outcome> {
    let Setting {
        client,
        ns,
        n,
        m,
        timeout,
        ..
    } = *setting;
    let total = n * m;
    let load_average = Machine::now().load_average;
    let stand_in = setting.node.finish_pods(ns);
    let sampler = process.as_ref().map(|p| Sampler::start(p.pid()));
    let cpu_before = match &process {
        Some(p) => p.cpu_seconds()?,
        None => 0.0,
    };
    let events_before = events_by_reporter(client, ns).await?;
    let before = request_counts(client).await?;
    let control_plane_before = control_plane_cpu(webhook);
    let refused_before = webhook
        .map(RegisteredWebhook::connections_refused)
        .transpose()?;
    let start = Instant::now();
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let (worked, created) = tokio::join!(work, wait_jobs(&jobs, start, timeout, total));
    worked?;
    let jobs_created_s = created?;
    let control_plane_cpu_s = delta(&control_plane_before, &control_plane_cpu(webhook));
    let vcs: Api<VirtualCluster> = Api::namespaced(client.clone(), ns);
    let completed_s = loop {
        let done = match finish {
            Finish::VirtualClustersCompleted => {
                let list = vcs.list(&ListParams::default()).await?.items;
                list.iter().filter(|vc| vc.phase() == "Completed").count() >= n
            }
            Finish::JobsComplete => {
                let list = jobs.list(&ListParams::default()).await?.items;
                list.iter().filter(|j| complete(j)).count() >= total
            }
        };
        if done {
            break start.elapsed().as_secs_f64();
        }
        if let Some(p) = process.as_mut() {
            p.check_alive()?;
        }
        if start.elapsed() > timeout {
            // Every Job exists, so the creation figures stand; "all done" is reported as not
            // reached (null in the JSON, "–" in the table) rather than losing the round.
            eprintln!(
                "operator bench: not all done within {timeout:?}; the round is kept without its \"all done\" time"
            );
            break f64::NAN;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let after = request_counts(client).await?;
    let refused_after = webhook
        .map(RegisteredWebhook::connections_refused)
        .transpose()?;
    let d = delta(&before, &after);
    let events = delta(&events_before, &events_by_reporter(client, ns).await?);
    let mut own = own;
    *own.entry("POST events".to_owned()).or_default() += events
        .iter()
        .filter(|(reporter, _)| CONTROL_PLANE.contains(&reporter.as_str()))
        .map(|(_, v)| v)
        .sum::<f64>();
    let mut outcome = Outcome {
        jobs_created_s,
        completed_s,
        jobs_per_s: total as f64 / jobs_created_s,
        writes_per_vc: writes_per_vc(&d, &own, n),
        events_per_vc: events
            .iter()
            .map(|(k, v)| (k.clone(), v / n as f64))
            .collect(),
        requests_per_vc: d.values().sum::<f64>() / n as f64,
        reads_per_vc: reads_per_vc(&d, n),
        control_plane_cpu_s,
        webhook_connections_refused: match (refused_before, refused_after) {
            (Some(before), Some(after)) => after - before,
            _ => f64::NAN,
        },
        load_average,
        ..Outcome::default()
    };
    if let (Some(p), Some(sampler)) = (process, sampler) {
        outcome.cpu_s = p.cpu_seconds()? - cpu_before;
        outcome.rss_kib = sampler.max();
        (outcome.idle_cpu_percent, outcome.idle_requests_per_s) =
            idle_figures(client, p, setting.idle).await?;
    }
    stand_in.abort();
    Ok(outcome)
}

/// The operator, with the real webhook registered for the namespace.
async fn run_operator(setting: &Setting<'_>, binary: &std::path::Path) -> Result<Outcome> {
    let Setting {
        client, ns, n, m, ..
    } = *setting;
    let mut unused = plugins(ns, 1)?.remove(0);
    let plugins = plugins(ns, m)?;
    unused.metadata.name = Some(UNUSED_PLUGIN.to_owned());
    crate::fixture::create_all(client, ns, plugins.clone(), 16).await?;
    crate::fixture::create_all(client, ns, vec![unused], 1).await?;
    let vcs = waiting_vcs(ns, n, &plugins, setting.kubeconfig)?;
    crate::fixture::create_all(client, ns, vcs, 16).await?;
    let webhook = register_webhook(client, ns, setting.out).await?;
    let admin = proc::free_port()?;
    // Unpinned, as the plain client in this driver and the apiserver are: the three targets
    // share the machine's cores the same way.
    let mut command = std::process::Command::new(binary);
    command
        .args(["--namespace", ns, "--leader-election", "false"])
        .args(["--mark-key-namespace", ns])
        .arg(format!("--admin-addr=127.0.0.1:{admin}"))
        // Every plugin's Job at once: the run measures creation, not the per-cluster limit.
        .arg(format!("--max-parallel-jobs={}", m.max(1)))
        .args(["--executor-image", EXECUTOR_IMAGE])
        .env(
            "KUBECONFIG",
            kosmos_e2e::kubeconfig_path(Cluster::Host).await?,
        );
    let mut operator = Server::start(
        "virtual-cluster-operator",
        command,
        &setting.out.join("operator.log"),
    )?;
    proc::wait_for_port(
        &mut operator,
        ([127, 0, 0, 1], admin).into(),
        Duration::from_secs(60),
    )?;
    wait_settled(([127, 0, 0, 1], admin).into(), n, setting.timeout).await?;
    // The flips are the driver's own writes.
    let own = BTreeMap::from([("PATCH virtualclusters".to_owned(), n as f64)]);
    let mut outcome = measure(
        setting,
        Some(&mut operator),
        Some(&webhook),
        own,
        flip(client, ns, n),
        Finish::VirtualClustersCompleted,
    )
    .await?;
    let admin = ([127, 0, 0, 1], admin).into();
    outcome.reconciles_without_edit = wake(client, ns, None, admin).await?;
    outcome.reconciles_after_unused_plugin_edit =
        wake(client, ns, Some(UNUSED_PLUGIN), admin).await?;
    outcome.reconciles_after_used_plugin_edit = wake(client, ns, Some("bench-0"), admin).await?;
    drop(operator);
    drop(webhook);
    let names = (0..n).map(|i| format!("tenant-{i:04}")).collect();
    release_finalizers(Api::<VirtualCluster>::namespaced(client.clone(), ns), names).await?;
    Ok(outcome)
}

/// A plugin of the operator's namespace that no VirtualCluster uses.
const UNUSED_PLUGIN: &str = "bench-unused";

/// How long the reconciliations after a plugin edit are counted.
const WAKE_WINDOW: Duration = Duration::from_secs(3);

/// The operator's reconciliations so far, from its admin port.
fn reconciles_total(admin: std::net::SocketAddr) -> Result<f64> {
    let text = crate::machine::http_get(admin, "/metrics")?;
    metric_value(&text, "virtual_cluster_operator_reconciles_total")
        .context("the operator's /metrics has no virtual_cluster_operator_reconciles_total")
}

/// The value of an unlabelled metric in a Prometheus text exposition.
fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until the operator has reconciled each of the `n` waiting VirtualClusters (finalizer,
/// kubeconfig Secret, status) and then nothing for [`SETTLED_FOR`]: the round measures what
/// the flip starts, not the setup of a thousand VirtualClusters (a fixed 3 s wait left most of
/// that setup inside the measured window at full size, until 2026-12-07).
async fn wait_settled(admin: std::net::SocketAddr, n: usize, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    let mut last = reconciles_total(admin)?;
    let mut still_since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = reconciles_total(admin)?;
        if now != last {
            (last, still_since) = (now, Instant::now());
        } else if now >= n as f64 && still_since.elapsed() >= SETTLED_FOR {
            eprintln!(
                "operator bench: operator settled on {n} waiting VirtualClusters in {:.1} s",
                start.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!(
                "the operator did not settle on {n} waiting VirtualClusters within {timeout:?} ({last} reconciliations)"
            );
        }
    }
}

/// How long the operator must be without reconciliations to count as settled.
const SETTLED_FOR: Duration = Duration::from_secs(2);

/// The operator's reconciliations within [`WAKE_WINDOW`] after a metadata edit of `plugin`
/// (a label: nothing to install, only what the edit wakes), or without an edit.
async fn wake(
    client: &Client,
    ns: &str,
    plugin: Option<&str>,
    admin: std::net::SocketAddr,
) -> Result<f64> {
    let reconciles = || reconciles_total(admin);
    let before = reconciles()?;
    if let Some(plugin) = plugin {
        Api::<VirtualClusterPlugin>::namespaced(client.clone(), ns)
            .patch(
                plugin,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"bench.kosmos.io/edited": crate::machine::utc_now().replace(':', "-")}}})),
            )
            .await
            .with_context(|| format!("editing plugin {ns}/{plugin}"))?;
    }
    tokio::time::sleep(WAKE_WINDOW).await;
    Ok(reconciles()? - before)
}

/// The ceiling: the operator's own bare Jobs, created by a plain client, one task per
/// VirtualCluster creating its Jobs as the operator does (up to
/// [`kosmos_operator::controller::CREATES_AT_ONCE`] at once), as many tasks at once as the
/// operator reconciles VirtualClusters at once (its `--concurrent-reconciles` default; unbounded,
/// a thousand tasks overloaded the apiserver and made the "ceiling" slower than the operator,
/// 2026-12-06), while the driver flips the VirtualClusters as in the operator's round. The same
/// plugins and VirtualClusters exist and the same webhook is registered, so each Job is the operator's
/// (owner reference included) and passes the same admission chain: what is left between the
/// two is the operator's own work.
async fn run_ceiling(setting: &Setting<'_>) -> Result<Outcome> {
    let Setting {
        client, ns, n, m, ..
    } = *setting;
    let plugins = plugins(ns, m)?;
    crate::fixture::create_all(client, ns, plugins.clone(), 16).await?;
    crate::fixture::create_all(
        client,
        ns,
        waiting_vcs(ns, n, &plugins, setting.kubeconfig)?,
        16,
    )
    .await?;
    let vcs = Api::<VirtualCluster>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items;
    let webhook = register_webhook(client, ns, setting.out).await?;
    let api: Api<Job> = Api::namespaced(client.clone(), ns);
    let jobs: Vec<Vec<Job>> = vcs
        .iter()
        .map(|vc| {
            plugins
                .iter()
                .map(|p| {
                    let spec_hash = contract::spec_hash(&p.spec);
                    let new = kosmos_operator::plan::NewJob {
                        id: contract::ExecutorJobId::new(
                            &vc.name_any(),
                            &p.name_any(),
                            Action::Install,
                            &spec_hash,
                            1,
                            "",
                        ),
                        timeout_seconds: p.spec.timeout_seconds(),
                        executor_image: None,
                    };
                    kosmos_operator::jobs::bare_job(vc, &new, EXECUTOR_IMAGE)
                })
                .collect()
        })
        .collect();
    let params = PostParams {
        dry_run: false,
        field_manager: Some(contract::OPERATOR_FIELD_MANAGER.to_owned()),
    };
    let concurrency = usize::from(
        kosmos_operator::server::Args::local(ns, "ceiling", &[])?.concurrent_reconciles,
    );
    let creates = async {
        futures::stream::iter(jobs.into_iter().map(|list| {
            let (api, params) = (api.clone(), params.clone());
            async move {
                futures::stream::iter(list.iter().map(|job| api.create(&params, job)))
                    .buffered(kosmos_operator::controller::CREATES_AT_ONCE)
                    .try_collect::<Vec<Job>>()
                    .await?;
                Ok::<_, kube::Error>(())
            }
        }))
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>()
        .await?;
        Ok(())
    };
    // The same flips as the operator's round, at the same moment: the driver's writes are the
    // same in both rounds, and what is left between them is the operator's own work.
    let work = async {
        tokio::try_join!(flip(client, ns, n), creates)?;
        Ok(())
    };
    let own = BTreeMap::from([("PATCH virtualclusters".to_owned(), n as f64)]);
    let outcome = measure(
        setting,
        None,
        Some(&webhook),
        own,
        work,
        Finish::JobsComplete,
    )
    .await?;
    drop(webhook);
    Ok(outcome)
}

/// The peer: helm-controller with N×M HelmCharts; its Jobs are counted as they appear.
async fn run_peer(setting: &Setting<'_>, binary: &std::path::Path) -> Result<Outcome> {
    let Setting {
        client, ns, n, m, ..
    } = *setting;
    let kubeconfig = kosmos_e2e::kubeconfig_path(Cluster::Host).await?;
    let mut command = std::process::Command::new(binary);
    command
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--namespace", ns]);
    let mut controller = Server::start(
        "helm-controller",
        command,
        &setting.out.join("helm-controller.log"),
    )?;
    // It installs its CRDs at start; wait for them to be served.
    let charts = kube::discovery::ApiResource {
        group: "helm.cattle.io".into(),
        version: "v1".into(),
        api_version: "helm.cattle.io/v1".into(),
        kind: "HelmChart".into(),
        plural: "helmcharts".into(),
    };
    let api: Api<kube::core::DynamicObject> = Api::namespaced_with(client.clone(), ns, &charts);
    let deadline = Instant::now() + Duration::from_secs(60);
    while api.list(&ListParams::default().limit(1)).await.is_err() {
        controller.check_alive()?;
        if Instant::now() > deadline {
            bail!("helm-controller did not install the HelmChart CRD within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let total = n * m;
    let charts: Vec<kube::core::DynamicObject> = (0..total)
        .map(|i| {
            serde_json::from_value(json!({
                "apiVersion": "helm.cattle.io/v1",
                "kind": "HelmChart",
                "metadata": {"name": format!("chart-{i:05}"), "namespace": ns},
                "spec": {"chart": "stable/bench", "repo": "https://charts.example.com", "targetNamespace": "default"}
            }))
        })
        .collect::<Result<_, _>>()?;
    // The HelmCharts are created once the clock runs: they are its work, as the flips are the
    // operator's.
    let work = futures::stream::iter(charts.into_iter().map(|chart| {
        let api = api.clone();
        async move { api.create(&PostParams::default(), &chart).await.map(|_| ()) }
    }))
    .buffer_unordered(32)
    .try_collect::<Vec<()>>();
    let work = async { work.await.map(|_| ()).map_err(anyhow::Error::from) };
    let own = BTreeMap::from([("POST helmcharts".to_owned(), total as f64)]);
    let outcome = measure(
        setting,
        Some(&mut controller),
        None,
        own,
        work,
        Finish::JobsComplete,
    )
    .await?;
    drop(controller);
    release_finalizers(api, (0..total).map(|i| format!("chart-{i:05}")).collect()).await?;
    Ok(outcome)
}

/// Takes the finalizers off objects once their controller is stopped, so that deleting the
/// namespace deletes them instead of waiting for a controller that is gone.
async fn release_finalizers<K>(api: Api<K>, names: Vec<String>) -> Result<()>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    futures::stream::iter(names.into_iter().map(|name| {
        let api = api.clone();
        async move {
            match api
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                )
                .await
            {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                Err(e) => Err(e),
            }
        }
    }))
    .buffer_unordered(32)
    .try_collect::<Vec<()>>()
    .await?;
    Ok(())
}

/// What the three targets read and write: the idle request rate counts only these.
const CONTROLLER_KINDS: [&str; 9] = [
    "virtualclusters",
    "virtualclusterplugins",
    "jobs",
    "pods",
    "secrets",
    "events",
    "helmcharts",
    "helmchartconfigs",
    "configmaps",
];

/// CPU share of the controller and the apiserver's request rate over `idle` on the kinds it
/// works with, with nothing to do.
async fn idle_figures(client: &Client, server: &Server, idle: Duration) -> Result<(f64, f64)> {
    let cpu = server.cpu_seconds()?;
    let before = request_counts(client).await?;
    tokio::time::sleep(idle).await;
    let after = request_counts(client).await?;
    let cpu = server.cpu_seconds()? - cpu;
    // Only the kinds the controllers work with: the cluster's own heartbeats (leases, nodes,
    // the discovery of cluster.sh's kubectl loop) tick regardless and would swamp them.
    let requests: f64 = delta(&before, &after)
        .iter()
        .filter(|(k, _)| {
            let resource = k.split_once(' ').map(|(_, r)| r).unwrap_or_default();
            let resource = resource.split('/').next().unwrap_or_default();
            CONTROLLER_KINDS.contains(&resource)
        })
        .map(|(_, v)| v)
        .sum();
    Ok((
        cpu / idle.as_secs_f64() * 100.0,
        requests.max(0.0) / idle.as_secs_f64(),
    ))
}

fn summarize(outcomes: &[Outcome], targets: &[&str]) -> Value {
    let mut out = serde_json::Map::new();
    for target in targets {
        let of: Vec<&Outcome> = outcomes.iter().filter(|o| o.target == *target).collect();
        if of.is_empty() {
            // Not run yet: the report is written after every round.
            continue;
        }
        let pick =
            |f: fn(&Outcome) -> f64| Spread::of(&of.iter().map(|o| f(o)).collect::<Vec<_>>());
        out.insert(
            (*target).to_owned(),
            json!({
                "jobs_created_s": pick(|o| o.jobs_created_s),
                "completed_s": pick(|o| o.completed_s),
                "jobs_per_s": pick(|o| o.jobs_per_s),
                "requests_per_vc": pick(|o| o.requests_per_vc),
                "writes_per_vc": pick(|o| o.writes_per_vc.values().sum()),
                "reads_per_vc": pick(|o| o.reads_per_vc.values().sum()),
                "rss_mib": pick(|o| o.rss_kib as f64 / 1024.0),
                "cpu_s": pick(|o| o.cpu_s),
                "control_plane_cpu_s": pick(|o| o.control_plane_cpu_s.values().sum()),
                "webhook_connections_refused": pick(|o| o.webhook_connections_refused),
                "idle_cpu_percent": pick(|o| o.idle_cpu_percent),
                "idle_requests_per_s": pick(|o| o.idle_requests_per_s),
                "load_average": pick(|o| o.load_average),
                "reconciles_without_edit": pick(|o| o.reconciles_without_edit),
                "reconciles_after_unused_plugin_edit": pick(|o| o.reconciles_after_unused_plugin_edit),
                "reconciles_after_used_plugin_edit": pick(|o| o.reconciles_after_used_plugin_edit),
            }),
        );
    }
    let operator: Vec<&Outcome> = outcomes.iter().filter(|o| o.target == "operator").collect();
    for other in targets.iter().filter(|t| **t != "operator") {
        // Round by round: the operator's figure over the other's in the same round.
        let ratio = |f: fn(&Outcome) -> f64| -> Spread {
            let ratios: Vec<f64> = operator
                .iter()
                .filter_map(|o| {
                    let x = outcomes
                        .iter()
                        .find(|x| x.target == *other && x.round == o.round)?;
                    Some(f(o) / f(x))
                })
                .filter(|r| r.is_finite())
                .collect();
            Spread::of(&ratios)
        };
        out.insert(
            format!("operator_vs_{other}"),
            json!({
                "jobs_per_s": ratio(|o| o.jobs_per_s),
                "control_plane_cpu_s": ratio(|o| o.control_plane_cpu_s.values().sum()),
            }),
        );
    }
    Value::Object(out)
}

fn show(v: &Value, digits: usize) -> String {
    match serde_json::from_value::<Spread>(v.clone()) {
        Ok(s) if s.rounds > 0 => s.show(digits),
        _ => "–".to_owned(),
    }
}

fn markdown(report: &Value) -> String {
    let cfg = &report["config"];
    let s = &report["summary"];
    let mut md = format!(
        "### Operator\n\n{} VirtualClusters × {} plugins flip to AllNodeReady at once (local host apiserver; pods \
         finished by a kubelet stand-in, Jobs completed by the real job controller); {} rounds, targets \
         alternating. `median (min–max)`.\n\n",
        cfg["virtual_clusters"], cfg["plugins"], cfg["rounds"]
    );
    if let Some(why) = report["peer_unavailable"].as_str() {
        md.push_str(&format!("Peer not measured: {why}\n\n"));
    }
    md.push_str("| | all Jobs created (s) | Jobs/s | all done (s) | API requests / VC | reads / VC | writes / VC | RSS MiB | CPU s | control plane CPU s | idle CPU % | idle requests/s | load average |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for target in ["operator", "ceiling", "peer"] {
        let t = &s[target];
        if t.is_null() {
            continue;
        }
        md.push_str(&format!(
            "| {target} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            show(&t["jobs_created_s"], 2),
            show(&t["jobs_per_s"], 0),
            show(&t["completed_s"], 2),
            show(&t["requests_per_vc"], 1),
            show(&t["reads_per_vc"], 1),
            show(&t["writes_per_vc"], 1),
            show(&t["rss_mib"], 1),
            show(&t["cpu_s"], 2),
            show(&t["control_plane_cpu_s"], 1),
            show(&t["idle_cpu_percent"], 2),
            show(&t["idle_requests_per_s"], 2),
            show(&t["load_average"], 1),
        ));
    }
    md.push_str(&format!(
        "\nJobs/s, operator ÷ ceiling: {}; operator ÷ peer: {}. Control-plane CPU until all Jobs \
         existed, operator ÷ ceiling: {}.\n",
        show(&s["operator_vs_ceiling"]["jobs_per_s"], 2),
        show(&s["operator_vs_peer"]["jobs_per_s"], 2),
        show(&s["operator_vs_ceiling"]["control_plane_cpu_s"], 2),
    ));
    md.push_str(&format!(
        "Connections the webhook closed at once (its `--max-connections` open, each a failed \
         create) during the round: operator {}, ceiling {}.\n",
        show(&s["operator"]["webhook_connections_refused"], 0),
        show(&s["ceiling"]["webhook_connections_refused"], 0),
    ));
    md.push_str(
        "\nControl-plane CPU seconds from the flip until every Job existed (first round), by process:\n\n",
    );
    for target in ["operator", "ceiling", "peer"] {
        let Some(o) = report["outcomes"]
            .as_array()
            .and_then(|a| a.iter().find(|o| o["target"] == target))
        else {
            continue;
        };
        let parts: Vec<String> = o["control_plane_cpu_s"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k} {:.1}", v.as_f64().unwrap_or_default()))
            .collect();
        if !parts.is_empty() {
            md.push_str(&format!("- {target}: {}\n", parts.join(", ")));
        }
    }
    if let Some(o) = report["outcomes"]
        .as_array()
        .and_then(|a| a.iter().find(|o| o["target"] == "operator"))
    {
        md.push_str("\nThe operator's writes per VirtualCluster (first round), by request:\n\n");
        if let Some(w) = o["writes_per_vc"].as_object() {
            for (k, v) in w {
                md.push_str(&format!("- `{k}`: {:.2}\n", v.as_f64().unwrap_or_default()));
            }
        }
        md.push_str("\nReads per VirtualCluster during the run (first round), every client's, by request:\n\n");
        if let Some(w) = o["reads_per_vc"].as_object() {
            for (k, v) in w {
                md.push_str(&format!("- `{k}`: {:.2}\n", v.as_f64().unwrap_or_default()));
            }
        }
        md.push_str("\nEvents per VirtualCluster during the run (first round), by reporter (the control plane's are not counted as the operator's writes):\n\n");
        if let Some(w) = o["events_per_vc"].as_object() {
            for (k, v) in w {
                md.push_str(&format!("- `{k}`: {:.2}\n", v.as_f64().unwrap_or_default()));
            }
        }
        let op = &s["operator"];
        md.push_str(&format!(
            "\nSteady state, {} VirtualClusters Completed: the operator's reconciliations within {} s with no edit {}, after a label edit of a plugin no VirtualCluster uses {}, after one of a plugin all of them use {}.\n",
            cfg["virtual_clusters"],
            WAKE_WINDOW.as_secs(),
            show(&op["reconciles_without_edit"], 0),
            show(&op["reconciles_after_unused_plugin_edit"], 0),
            show(&op["reconciles_after_used_plugin_edit"], 0),
        ));
    }
    md.push('\n');
    md
}
