//! The webhook benchmark: `plugin-webhook serve` (release build, caches fed by the host
//! apiserver with 1,000 plugins and 1,000 VirtualClusters) against the ceiling (a fixed answer
//! over the same TLS) and the peer (controller-runtime's admission.Webhook, same patch), each
//! pinned to the server core, with oha on the other core. Rounds alternate the order of the
//! three, so drift in the machine's load falls on all of them alike.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use k8s_openapi::api::batch::v1::Job;
use kosmos_api::VirtualCluster;
use kosmos_e2e::{Cluster, TestNamespace};
use kube::ResourceExt as _;
use serde::Serialize;
use serde_json::{Value, json};

use crate::fixture::{self, OPERATOR_USER, PV_PATH_PLUGIN, URI_CHART_PLUGIN};
use crate::load::{Load, Outcome, Protocol};
use crate::machine::{self, Machine};
use crate::proc::{self, Server};
use crate::stats::Spread;

/// Flags of `kosmos-bench webhook`.
#[derive(Clone, Debug, clap::Args)]
pub struct WebhookArgs {
    /// A small run: 2 rounds of 2 seconds each.
    #[arg(long)]
    pub quick: bool,
    /// Rounds (each measures every target once per scenario, in a rotated order).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Seconds of load per measurement.
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Plugins in the caches (two of them reviewed, the rest fillers).
    #[arg(long, default_value_t = 1000)]
    pub plugins: usize,
    /// VirtualClusters in the caches.
    #[arg(long, default_value_t = 1000)]
    pub virtual_clusters: usize,
    /// Requests in flight when saturating.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Fixed rates (reviews per second) at which latency is measured.
    #[arg(long, value_delimiter = ',', default_value = "100,500,2000")]
    pub rates: Vec<u32>,
    /// Where the JSON and Markdown go.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
}

/// A server under test.
struct Target {
    name: &'static str,
    server: Server,
    /// URL per review name.
    urls: BTreeMap<&'static str, String>,
    rss_rest_kib: u64,
    rss_load_kib: u64,
}

/// One measurement.
#[derive(Clone, Debug, Serialize)]
struct Measurement {
    round: usize,
    scenario: String,
    target: &'static str,
    outcome: Outcome,
    /// The machine's one-minute load average just before the measurement: others' work on
    /// the shared cores, which the figure shares.
    load_average: f64,
}

/// Environment variable naming a built tool; `unavailable:<why>` when it could not be built.
fn tool(var: &str) -> Result<Option<PathBuf>, String> {
    match std::env::var(var) {
        Ok(v) if v.starts_with("unavailable:") => Err(v["unavailable:".len()..].to_owned()),
        Ok(v) if !v.is_empty() => Ok(Some(PathBuf::from(v))),
        _ => Ok(None),
    }
}

/// Runs the webhook benchmark and writes `webhook.json` and `webhook.md` into `--out`.
pub async fn run(args: &WebhookArgs) -> Result<()> {
    let rounds = args.rounds.unwrap_or(if args.quick { 2 } else { 5 });
    let seconds = args.seconds.unwrap_or(if args.quick { 2 } else { 6 });
    let machine = Machine::now();
    let oha = tool("BENCH_OHA")
        .map_err(|why| anyhow::anyhow!("oha: {why}"))?
        .context("BENCH_OHA is not set: run through `make bench` (bench/tools.sh builds oha)")?;
    let peer_binary = tool("BENCH_PEER_WEBHOOK");
    let webhook_binary = sibling("plugin-webhook")?;
    let self_binary = std::env::current_exe()?;
    std::fs::create_dir_all(&args.out)?;
    let work = tempfile::tempdir()?;
    let dir = work.path();

    eprintln!(
        "webhook bench: loading {} plugins and {} VirtualClusters",
        args.plugins, args.virtual_clusters
    );
    let client = kosmos_e2e::host().await?;
    kosmos_e2e::install_crds(&client).await?;
    let namespace = TestNamespace::create(Cluster::Host, "bench-webhook").await?;
    let ns = namespace.name().to_owned();
    let plugins = fixture::plugins(&ns, args.plugins.saturating_sub(2))?;
    fixture::create_all(&client, &ns, plugins.clone(), 16).await?;
    let kubeconfig = kosmos_e2e::kubeconfig_yaml(Cluster::Virtual).await?;
    let enabled = [PV_PATH_PLUGIN.to_owned(), URI_CHART_PLUGIN.to_owned()];
    let vcs = fixture::virtual_clusters(&ns, args.virtual_clusters.max(1), &enabled, &kubeconfig)?;
    fixture::create_all(&client, &ns, vcs.clone(), 16).await?;
    let vc = vcs.first().context("no VirtualCluster")?;

    // The reviews: the operator's Jobs for the two featured plugins, defaulted by the apiserver.
    let mut reviews: BTreeMap<&'static str, PathBuf> = BTreeMap::new();
    let mut jobs: BTreeMap<&'static str, Job> = BTreeMap::new();
    for (name, plugin_name) in [("pvpath", PV_PATH_PLUGIN), ("uri", URI_CHART_PLUGIN)] {
        let plugin = plugins
            .iter()
            .find(|p| p.name_any() == plugin_name)
            .context("featured plugin missing")?;
        let job = fixture::admitted_job(&client, vc, plugin).await?;
        let path = dir.join(format!("review-{name}.json"));
        std::fs::write(
            &path,
            serde_json::to_vec(&fixture::review(&job, OPERATOR_USER))?,
        )?;
        reviews.insert(name, path);
        jobs.insert(name, job);
    }

    let certs = dir.join("certs");
    kosmos_webhook::tls::write(
        &kosmos_webhook::tls::generate(&["localhost".into(), "127.0.0.1".into()], 30)?,
        &certs,
    )?;
    let (cert, key) = (certs.join("tls.crt"), certs.join("tls.key"));

    // The webhook, as deployed: its own process, caches from the apiserver.
    let port = proc::free_port()?;
    let admin: SocketAddr = ([127, 0, 0, 1], proc::free_port()?).into();
    let mut command = proc::pinned(proc::SERVER_CORE, &webhook_binary);
    command
        .arg("serve")
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg(format!("--admin-listen={admin}"))
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .arg(format!("--watch-namespace={ns}"))
        // Its mark key Secret goes into the bench's namespace.
        .arg(format!("--namespace={ns}"))
        .arg(format!("--operator-user={OPERATOR_USER}"))
        .env(
            "KUBECONFIG",
            kosmos_e2e::kubeconfig_path(Cluster::Host).await?,
        );
    let mut webhook = Server::start(
        "plugin-webhook",
        command,
        &args.out.join("plugin-webhook.log"),
    )?;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while machine::http_get_status(admin, "/readyz").ok() != Some(200) {
        webhook.check_alive()?;
        if std::time::Instant::now() > deadline {
            bail!(
                "plugin-webhook did not become ready in 120 s; see its log in {}",
                args.out.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let webhook_url = format!("https://127.0.0.1:{port}/mutate");

    // The webhook's answers, which the ceiling then serves as they are.
    let mut answers: BTreeMap<&'static str, PathBuf> = BTreeMap::new();
    let mut patched: BTreeMap<&'static str, Value> = BTreeMap::new();
    for (name, review) in &reviews {
        let answer = post(&webhook_url, review)?;
        let job = patch_of(&answer, &jobs[name])
            .with_context(|| format!("plugin-webhook's answer to the {name} review"))?;
        patched.insert(name, job);
        let path = dir.join(format!("answer-{name}.json"));
        std::fs::write(&path, &answer)?;
        answers.insert(name, path);
    }

    let ceiling_port = proc::free_port()?;
    let mut command = proc::pinned(proc::SERVER_CORE, &self_binary);
    command
        .arg("ceiling")
        .arg(format!("--listen=127.0.0.1:{ceiling_port}"))
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key);
    for (name, path) in &answers {
        command
            .arg("--body")
            .arg(format!("{name}={}", path.display()));
    }
    let mut ceiling = Server::start("ceiling", command, &args.out.join("ceiling.log"))?;
    proc::wait_for_port(
        &mut ceiling,
        ([127, 0, 0, 1], ceiling_port).into(),
        Duration::from_secs(30),
    )?;

    let mut targets = vec![
        Target {
            name: "webhook",
            urls: reviews.keys().map(|n| (*n, webhook_url.clone())).collect(),
            rss_rest_kib: webhook.rss_kib()?,
            server: webhook,
            rss_load_kib: 0,
        },
        Target {
            name: "ceiling",
            urls: reviews
                .keys()
                .map(|n| {
                    (
                        *n,
                        format!("https://127.0.0.1:{ceiling_port}/mutate?review={n}"),
                    )
                })
                .collect(),
            rss_rest_kib: ceiling.rss_kib()?,
            server: ceiling,
            rss_load_kib: 0,
        },
    ];
    let peer_note = match peer_binary {
        Ok(Some(binary)) => {
            let fixture_path = dir.join("peer-fixture.json");
            // The webhook signs its mark per Job with the key it keeps in the cluster; the peer
            // is handed the mark the webhook gave each review's Job instead of signing (less work
            // for the peer, never more).
            let mut marks = BTreeMap::new();
            for (name, plugin) in [("pvpath", PV_PATH_PLUGIN), ("uri", URI_CHART_PLUGIN)] {
                let mark = patched[name]["metadata"]["annotations"]
                    [kosmos_api::contract::INJECTED_ANNOTATION]
                    .as_str()
                    .with_context(|| format!("the webhook's {name} Job carries no mark"))?;
                marks.insert(plugin, mark.to_owned());
            }
            std::fs::write(
                &fixture_path,
                serde_json::to_vec(&peer_fixture(&plugins, &vcs, vc, &marks)?)?,
            )?;
            let peer_port = proc::free_port()?;
            let mut command = proc::pinned(proc::SERVER_CORE, &binary);
            command
                .arg(format!("-fixture={}", fixture_path.display()))
                .arg(format!("-port={peer_port}"))
                .arg(format!("-cert-dir={}", certs.display()));
            let mut peer = Server::start("peer", command, &args.out.join("peer-webhook.log"))?;
            proc::wait_for_port(
                &mut peer,
                ([127, 0, 0, 1], peer_port).into(),
                Duration::from_secs(30),
            )?;
            let peer_url = format!("https://127.0.0.1:{peer_port}/mutate");
            // Same patch: both answers applied to the review's Job give the same Job.
            for (name, review) in &reviews {
                let answer = post(&peer_url, review)?;
                let job = patch_of(&answer, &jobs[name])
                    .with_context(|| format!("the peer's answer to the {name} review"))?;
                if strip_empty(job.clone()) != strip_empty(patched[name].clone()) {
                    bail!(
                        "the peer's patch for the {name} review gives another Job than the webhook's:\npeer: {job}\nwebhook: {}",
                        patched[name]
                    );
                }
            }
            targets.push(Target {
                name: "peer",
                urls: reviews.keys().map(|n| (*n, peer_url.clone())).collect(),
                rss_rest_kib: peer.rss_kib()?,
                server: peer,
                rss_load_kib: 0,
            });
            None
        }
        Ok(None) => Some("BENCH_PEER_WEBHOOK is not set: run through `make bench`".to_owned()),
        Err(why) => Some(why),
    };

    let mut scenarios: Vec<(String, &'static str, Protocol, Option<u32>)> = Vec::new();
    for review in ["pvpath", "uri"] {
        for protocol in [Protocol::H1, Protocol::H2] {
            scenarios.push((
                format!("saturated {review} {}", protocol.as_str()),
                review,
                protocol,
                None,
            ));
        }
    }
    for protocol in [Protocol::H1, Protocol::H2] {
        for rate in &args.rates {
            scenarios.push((
                format!("{rate}/s pvpath {}", protocol.as_str()),
                "pvpath",
                protocol,
                Some(*rate),
            ));
        }
    }

    let mut measurements = Vec::new();
    for round in 0..rounds {
        for (scenario, review, protocol, rate) in &scenarios {
            let n = targets.len();
            for i in 0..n {
                let target = &mut targets[(i + round) % n];
                target.server.check_alive()?;
                eprintln!(
                    "webhook bench: round {}/{rounds}, {scenario}, {}",
                    round + 1,
                    target.name
                );
                let load_average = Machine::now().load_average;
                let outcome = Load {
                    oha: &oha,
                    url: target.urls[review].clone(),
                    body: reviews[review].clone(),
                    protocol: *protocol,
                    concurrency: args.concurrency,
                    rate: *rate,
                    duration: Duration::from_secs(seconds),
                    keep_alive: true,
                    ca_cert: None,
                    client_cert: None,
                    request_timeout: None,
                }
                .run()
                .with_context(|| format!("{scenario} against {}", target.name))?;
                target.rss_load_kib = target.rss_load_kib.max(target.server.rss_kib()?);
                measurements.push(Measurement {
                    round,
                    scenario: scenario.clone(),
                    target: target.name,
                    outcome,
                    load_average,
                });
            }
        }
    }

    let answer_bytes: BTreeMap<&str, u64> = answers
        .iter()
        .map(|(n, p)| Ok((*n, std::fs::metadata(p)?.len())))
        .collect::<Result<_>>()?;
    let review_bytes: BTreeMap<&str, u64> = reviews
        .iter()
        .map(|(n, p)| Ok((*n, std::fs::metadata(p)?.len())))
        .collect::<Result<_>>()?;
    let memory: BTreeMap<&str, Value> = targets
        .iter()
        .map(|t| {
            let hwm = proc::status_field(t.server.pid(), "VmHWM").unwrap_or_default();
            (
                t.name,
                json!({"rest_kib": t.rss_rest_kib, "load_kib": t.rss_load_kib, "peak_kib": hwm}),
            )
        })
        .collect();
    let summary = summarize(
        &scenarios,
        &measurements,
        &targets.iter().map(|t| t.name).collect::<Vec<_>>(),
    );
    let report = json!({
        "machine": machine,
        "config": {
            "rounds": rounds, "seconds": seconds, "plugins": args.plugins,
            "virtual_clusters": args.virtual_clusters, "concurrency": args.concurrency,
            "pinned": proc::cores() > proc::LOAD_CORE,
        },
        "review_bytes": review_bytes,
        "answer_bytes": answer_bytes,
        "memory": memory,
        "peer_unavailable": peer_note,
        "summary": summary,
        "measurements": measurements,
    });
    std::fs::write(
        args.out.join("webhook.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    std::fs::write(args.out.join("webhook.md"), markdown(&report, &summary))?;
    drop(targets);
    namespace.delete().await?;
    eprintln!(
        "webhook bench: wrote {}/webhook.json and webhook.md",
        args.out.display()
    );
    Ok(())
}

/// One of our binaries: in `KOSMOS_BENCH_BIN_DIR` when set (bench/run.sh points it at the
/// images' static musl builds, so what ships is what is measured), else built next to this one.
pub fn sibling(name: &str) -> Result<PathBuf> {
    let path = match std::env::var_os("KOSMOS_BENCH_BIN_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join(name),
        None => std::env::current_exe()?.with_file_name(name),
    };
    if !path.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release -p kosmos-webhook -p kosmos-operator` (bench/run.sh builds the images' musl binaries)",
            path.display()
        );
    }
    Ok(path)
}

/// POSTs a review once with curl (HTTP/1.1, certificate not checked: a throwaway CA) and
/// returns the body.
fn post(url: &str, review: &Path) -> Result<Vec<u8>> {
    let output = Command::new("curl")
        .args([
            "-sS",
            "-k",
            "--http1.1",
            "--fail",
            "-H",
            "content-type: application/json",
            "--data-binary",
        ])
        .arg(format!("@{}", review.display()))
        .arg(url)
        .output()
        .context("running curl")?;
    if !output.status.success() {
        bail!("POST {url}: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(output.stdout)
}

/// The Job after applying the answer's patch; fails unless the answer allows with a patch.
fn patch_of(answer: &[u8], job: &Job) -> Result<Value> {
    let answer: Value = serde_json::from_slice(answer).context("the answer is not JSON")?;
    let response = answer.get("response").context("no response")?;
    if response.get("allowed") != Some(&Value::Bool(true)) {
        bail!("not allowed: {response}");
    }
    let bytes = match response.get("patch") {
        Some(Value::String(b64)) => base64::engine::general_purpose::STANDARD.decode(b64)?,
        Some(Value::Array(numbers)) => numbers
            .iter()
            .map(|n| {
                n.as_u64()
                    .and_then(|n| u8::try_from(n).ok())
                    .context("patch byte")
            })
            .collect::<Result<_>>()?,
        _ => bail!("no patch: {response}"),
    };
    let patch: json_patch::Patch =
        serde_json::from_slice(&bytes).context("the patch is not a JSON patch")?;
    let mut value = serde_json::to_value(job)?;
    json_patch::patch(&mut value, &patch).context("the patch does not apply")?;
    Ok(value)
}

/// Drops nulls and empty objects and arrays: how Go and Rust write an absent field differs.
fn strip_empty(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, strip_empty(v)))
                .filter(|(_, v)| !is_empty(v))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(strip_empty).collect()),
        other => other,
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// The peer's stand-in for its caches: for every plugin, what the Rust mutation injects into
/// its executor Job in `vc` (with the mark from `marks` where it names the plugin); and the
/// names of the VirtualClusters.
fn peer_fixture(
    plugins: &[kosmos_api::VirtualClusterPlugin],
    vcs: &[VirtualCluster],
    vc: &VirtualCluster,
    marks: &BTreeMap<&str, String>,
) -> Result<Value> {
    let mut injections = serde_json::Map::new();
    for plugin in plugins {
        let spec_hash = kosmos_api::contract::spec_hash(&plugin.spec);
        let new = kosmos_operator::plan::NewJob {
            id: kosmos_api::contract::ExecutorJobId::new(
                &vc.name_any(),
                &plugin.name_any(),
                kosmos_api::contract::Action::Install,
                &spec_hash,
                1,
                "",
            ),
            timeout_seconds: plugin.spec.timeout_seconds(),
            executor_image: None,
        };
        let job = kosmos_operator::jobs::bare_job(vc, &new, "docker.io/alpine/k8s:1.34.1");
        let mutation = kosmos_webhook::mutate_job(&job, plugin, vc, &Default::default())
            .map_err(|d| anyhow::anyhow!("mutating the {} Job: {d}", plugin.name_any()))?;
        let mut mutated = serde_json::to_value(&job)?;
        json_patch::patch(&mut mutated, &mutation.patch)?;
        let pod = &mutated["spec"]["template"]["spec"];
        let container = pod["containers"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == "executor"))
            .context("no executor container")?;
        injections.insert(
            format!(
                "{}/{}",
                plugin.namespace().unwrap_or_default(),
                plugin.name_any()
            ),
            json!({
                "volumes": pod["volumes"],
                "mounts": container["volumeMounts"],
                "env": container["env"],
                "command": container["command"],
                "mark": marks.get(plugin.name_any().as_str()).cloned().unwrap_or(mutation.mark),
            }),
        );
    }
    let names: serde_json::Map<String, Value> = vcs
        .iter()
        .map(|v| {
            (
                format!("{}/{}", v.namespace().unwrap_or_default(), v.name_any()),
                Value::Bool(true),
            )
        })
        .collect();
    Ok(json!({"operatorUser": OPERATOR_USER, "plugins": injections, "virtualClusters": names}))
}

/// Per scenario: each target's figures and the webhook's ratios, per round, as spreads.
fn summarize(
    scenarios: &[(String, &'static str, Protocol, Option<u32>)],
    measurements: &[Measurement],
    targets: &[&'static str],
) -> Value {
    let mut out = serde_json::Map::new();
    for (scenario, _, _, rate) in scenarios {
        let of = |target: &str| -> Vec<&Measurement> {
            measurements
                .iter()
                .filter(|m| &m.scenario == scenario && m.target == target)
                .collect()
        };
        let mut entry = serde_json::Map::new();
        let loads: Vec<f64> = measurements
            .iter()
            .filter(|m| &m.scenario == scenario)
            .map(|m| m.load_average)
            .collect();
        entry.insert("load_average".to_owned(), json!(Spread::of(&loads)));
        for target in targets {
            let runs = of(target);
            let pick = |f: fn(&Outcome) -> f64| {
                Spread::of(&runs.iter().map(|m| f(&m.outcome)).collect::<Vec<_>>())
            };
            entry.insert(
                (*target).to_owned(),
                json!({
                    "rps": pick(|o| o.rps),
                    "p50_ms": pick(|o| o.p50_ms),
                    "p99_ms": pick(|o| o.p99_ms),
                    "p999_ms": pick(|o| o.p999_ms),
                }),
            );
        }
        let webhook = of("webhook");
        for other in targets.iter().filter(|t| **t != "webhook") {
            let others = of(other);
            // Ratios within a round: both measured minutes apart under the same load.
            let ratio = |f: fn(&Outcome) -> f64| {
                Spread::of(
                    &webhook
                        .iter()
                        .filter_map(|w| {
                            let o = others.iter().find(|o| o.round == w.round)?;
                            Some(f(&w.outcome) / f(&o.outcome))
                        })
                        .collect::<Vec<_>>(),
                )
            };
            let key = format!("webhook_vs_{other}");
            if rate.is_none() {
                entry.insert(key, json!({"rps": ratio(|o| o.rps)}));
            } else {
                entry.insert(
                    key,
                    json!({"p50": ratio(|o| o.p50_ms), "p99": ratio(|o| o.p99_ms)}),
                );
            }
        }
        out.insert(scenario.clone(), Value::Object(entry));
    }
    Value::Object(out)
}

fn spread(value: &Value) -> Spread {
    serde_json::from_value(value.clone()).unwrap_or_default()
}

/// The Markdown section of the report.
fn markdown(report: &Value, summary: &Value) -> String {
    let mut md = String::new();
    let cfg = &report["config"];
    md.push_str(&format!(
        "### Webhook\n\n`plugin-webhook serve` (release), caches of {} plugins and {} VirtualClusters fed by the \
         local apiserver; {} rounds of {} s per figure, targets alternating; oha keeps {} requests in flight \
         (h2: 4 connections). Figures are `median (min–max)` over rounds; ratios are taken within a round.\n\n",
        cfg["plugins"], cfg["virtual_clusters"], cfg["rounds"], cfg["seconds"], cfg["concurrency"]
    ));
    if let Some(why) = report["peer_unavailable"].as_str() {
        md.push_str(&format!("Peer not measured: {why}\n\n"));
    }
    md.push_str("| saturated | webhook reviews/s | ceiling reviews/s | peer reviews/s | webhook ÷ ceiling | webhook ÷ peer | load average |\n|---|---|---|---|---|---|---|\n");
    let map = summary.as_object().cloned().unwrap_or_default();
    for (scenario, entry) in map.iter().filter(|(s, _)| s.starts_with("saturated")) {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            scenario.trim_start_matches("saturated "),
            spread(&entry["webhook"]["rps"]).show(0),
            spread(&entry["ceiling"]["rps"]).show(0),
            opt(&entry["peer"]["rps"], 0),
            spread(&entry["webhook_vs_ceiling"]["rps"]).show(2),
            opt(&entry["webhook_vs_peer"]["rps"], 2),
            spread(&entry["load_average"]).show(1),
        ));
    }
    md.push_str("\n| fixed rate | webhook p50 / p99 / p99.9 ms | ceiling p50 / p99 / p99.9 ms | peer p50 / p99 / p99.9 ms | p99 webhook ÷ ceiling | load average |\n|---|---|---|---|---|---|\n");
    for (scenario, entry) in map.iter().filter(|(s, _)| !s.starts_with("saturated")) {
        let lat = |t: &str| {
            if entry[t].is_null() {
                "–".to_owned()
            } else {
                format!(
                    "{:.2} / {:.2} / {:.2}",
                    spread(&entry[t]["p50_ms"]).median,
                    spread(&entry[t]["p99_ms"]).median,
                    spread(&entry[t]["p999_ms"]).median
                )
            }
        };
        md.push_str(&format!(
            "| {scenario} | {} | {} | {} | {} | {} |\n",
            lat("webhook"),
            lat("ceiling"),
            lat("peer"),
            spread(&entry["webhook_vs_ceiling"]["p99"]).show(2),
            spread(&entry["load_average"]).show(1),
        ));
    }
    md.push_str("\n| memory (RSS, MiB) | at rest | under load (max seen) |\n|---|---|---|\n");
    if let Some(memory) = report["memory"].as_object() {
        for (name, m) in memory {
            let mib = |v: &Value| v.as_f64().unwrap_or_default() / 1024.0;
            md.push_str(&format!(
                "| {name} | {:.1} | {:.1} |\n",
                mib(&m["rest_kib"]),
                mib(&m["load_kib"])
            ));
        }
    }
    md.push_str("\n| review | request bytes | answer bytes |\n|---|---|---|\n");
    if let Some(answers) = report["answer_bytes"].as_object() {
        for (name, bytes) in answers {
            md.push_str(&format!(
                "| {name} | {} | {bytes} |\n",
                report["review_bytes"][name]
            ));
        }
    }
    md.push('\n');
    md
}

fn opt(value: &Value, digits: usize) -> String {
    if value.is_null() {
        "–".to_owned()
    } else {
        spread(value).show(digits)
    }
}
