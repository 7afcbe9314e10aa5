//! Support for the operator's end-to-end tests: the operator binary scoped to a test namespace,
//! a stand-in for the plugin webhook (registered in the real apiserver, it only adds the mark),
//! and small helpers around VirtualClusters, plugins and executor Jobs.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use axum::Json;
use axum::routing::post;
use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::batch::v1::Job;
use kosmos_api::{PluginPhase, PluginStatus, VirtualCluster, VirtualClusterPlugin};
use kosmos_api::{contract, mark};
use kosmos_e2e::{
    Cluster, DEFAULT_TIMEOUT, PodOutcome, TestNamespace, wait_for, wait_for_job_pod_and_finish,
};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// Bound on one step of a test: the job controller and the operator on a busy 2-core machine.
pub const STEP: Duration = DEFAULT_TIMEOUT;

/// A test's start: the host cluster's client with the CRDs installed, a fresh namespace named
/// after `prefix`, and the sweep that frees the namespace's VirtualClusters at the end.
pub async fn setup(prefix: &str) -> Result<(TestNamespace, Client, FinalizerSweep)> {
    let client = kosmos_e2e::host().await?;
    kosmos_e2e::install_crds(&client).await?;
    let ns = TestNamespace::create(Cluster::Host, prefix).await?;
    let sweep = FinalizerSweep::new(ns.name());
    Ok((ns, client, sweep))
}

/// The operator binary, run against the host cluster and scoped to one namespace.
pub struct Operator {
    child: Child,
    /// Where its log goes.
    pub log: PathBuf,
}

impl Operator {
    /// Starts the operator for `namespace` with fast retries; `extra` adds or overrides flags.
    pub async fn start(namespace: &str, extra: &[&str]) -> Result<Self> {
        Self::start_watching(namespace, &[namespace], extra).await
    }

    /// Like [`Operator::start`], watching the namespaces of `watched` (every namespace when it is
    /// empty) with its Lease and mark key in `namespace`.
    pub async fn start_watching(namespace: &str, watched: &[&str], extra: &[&str]) -> Result<Self> {
        let kubeconfig = kosmos_e2e::kubeconfig_path(Cluster::Host).await?;
        // Two operators of one test may start in the same millisecond: a counter keeps their
        // logs apart.
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        // Logs stay for whoever debugs a failure, in cargo's folder for test files rather
        // than /tmp, so that a `cargo clean` takes them away.
        let logs = Path::new(env!("CARGO_TARGET_TMPDIR")).join("operator-logs");
        std::fs::create_dir_all(&logs)?;
        let log = logs.join(format!(
            "virtual-cluster-operator-{namespace}-{}-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0),
            STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let file = std::fs::File::create(&log)?;
        let mut args: Vec<String> = watched
            .iter()
            .flat_map(|w| ["--namespace", w])
            .map(|s| (*s).to_owned())
            .collect();
        args.extend(
            [
                "--lease-namespace",
                namespace,
                "--lease-name",
                "virtual-cluster-operator",
                "--lease-duration-seconds",
                "3",
                "--admin-addr",
                "127.0.0.1:0",
                "--backoff-seconds",
                "1",
                "--max-backoff-seconds",
                "2",
                "--uninstall-timeout-seconds",
                "5",
                "--executor-image",
                "registry.invalid/kosmos/executor:e2e",
                // The stand-in webhook keeps its mark key in the test's namespace.
                "--mark-key-namespace",
                namespace,
            ]
            .iter()
            .map(|s| (*s).to_owned()),
        );
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        eprintln!("operator log: {}", log.display());
        let child = Command::new(env!("CARGO_BIN_EXE_virtual-cluster-operator"))
            .args(&args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kosmos_operator=debug")
            .env_remove("POD_NAME")
            // Only the flags above say what it watches.
            .env_remove("OPERATOR_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .context("starting virtual-cluster-operator")?;
        Ok(Self { child, log })
    }

    /// Kills the process at once (SIGKILL): no cleanup, no lease release.
    pub async fn kill(mut self) -> Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }

    /// The process id (part of its lease identity).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The log so far, for failure messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A stand-in for the plugin webhook: HTTPS with a fresh CA, registered for executor Jobs of one
/// namespace; it adds [`contract::INJECTED_ANNOTATION`] and turns the executor container into
/// one that ends when the test says so ([`kosmos_e2e::finish_pod`]).
pub struct MarkingWebhook {
    name: String,
    client: Client,
    server: tokio::task::JoinHandle<()>,
    /// Closes the listener and every open connection (keep-alive ones included) on pause.
    handle: axum_server::Handle<std::net::SocketAddr>,
    addr: std::net::SocketAddr,
    tls: axum_server::tls_rustls::RustlsConfig,
    state: std::sync::Arc<StandIn>,
}

/// What the stand-in answers with: its mode and the key it signs marks with.
struct StandIn {
    mode: std::sync::atomic::AtomicU8,
    key: mark::Key,
}

/// How the stand-in answers (fault drills switch it while it runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum WebhookMode {
    /// Marks the Job at once.
    Normal = 0,
    /// Marks the Job after 9 s (the registration allows 10).
    Slow = 1,
    /// Answers with bytes that are not an AdmissionReview.
    Garbage = 2,
}

fn serve_stand_in(
    listener: std::net::TcpListener,
    tls: axum_server::tls_rustls::RustlsConfig,
    handle: axum_server::Handle<std::net::SocketAddr>,
    state: std::sync::Arc<StandIn>,
) -> tokio::task::JoinHandle<()> {
    let app = axum::Router::new()
        .route("/mutate", post(mutate))
        .with_state(state);
    tokio::spawn(async move {
        if let Ok(server) = axum_server::from_tcp_rustls(listener, tls) {
            let _ = server.handle(handle).serve(app.into_make_service()).await;
        }
    })
}

impl MarkingWebhook {
    /// Serves and registers the stand-in for `namespace`, and waits until the apiserver calls it.
    pub async fn start(client: &Client, namespace: &str) -> Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "e2e operator test CA");
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        // The address at which the apiserver reaches this process (see kosmos_e2e::webhook_host).
        let host = kosmos_e2e::webhook_host();
        let key = rcgen::KeyPair::generate()?;
        let params = rcgen::CertificateParams::new(vec![host.clone()])?;
        let cert = params.signed_by(&key, &issuer)?;

        let listener = std::net::TcpListener::bind(kosmos_e2e::webhook_listen_addr())?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
            cert.pem().into_bytes(),
            key.serialize_pem().into_bytes(),
        )
        .await?;
        let addr = listener.local_addr()?;
        let handle = axum_server::Handle::new();
        let key = mark_key(client, namespace).await?;
        let state = std::sync::Arc::new(StandIn {
            mode: std::sync::atomic::AtomicU8::new(WebhookMode::Normal as u8),
            key,
        });
        let server = serve_stand_in(listener, tls.clone(), handle.clone(), state.clone());

        let name = format!("e2e-mark-{namespace}");
        let config = kosmos_e2e::executor_webhook_configuration(
            &name,
            namespace,
            &format!("https://{host}:{port}/mutate"),
            &ca_cert.pem(),
            &["CREATE"],
        );
        let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        api.create(&PostParams::default(), &config).await?;
        let this = Self {
            name,
            client: client.clone(),
            server,
            handle,
            addr,
            tls,
            state,
        };
        // The apiserver picks up new webhook configurations a moment later: probe with a
        // dry-run Job until it comes back marked.
        let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
        let probe: Job = serde_json::from_value(json!({
            "metadata": {
                "name": "webhook-probe",
                "labels": { contract::EXECUTOR_LABEL: "true" },
                "annotations": { "probe": "true" },
            },
            "spec": { "template": { "spec": {
                "restartPolicy": "Never",
                "containers": [{ "name": "x", "image": "registry.invalid/x" }],
            }}},
        }))?;
        let last = std::sync::Mutex::new(String::new());
        let marked = wait_for("the stand-in webhook to mark jobs", STEP, || async {
            let params = PostParams {
                dry_run: true,
                ..PostParams::default()
            };
            Ok(match jobs.create(&params, &probe).await {
                Ok(job) => {
                    let marked = job
                        .annotations()
                        .contains_key(contract::INJECTED_ANNOTATION);
                    if !marked && let Ok(mut l) = last.lock() {
                        *l = "the dry-run job came back unmarked".to_owned();
                    }
                    marked.then_some(())
                }
                Err(e) => {
                    if let Ok(mut l) = last.lock() {
                        *l = format!("dry-run create failed: {e}");
                    }
                    None
                }
            })
        })
        .await;
        if let Err(e) = marked {
            let last = last.lock().map(|l| l.clone()).unwrap_or_default();
            let _ = api.delete(&this.name, &DeleteParams::default()).await;
            bail!("{e:#}; last: {last}");
        }
        Ok(this)
    }

    /// Switches how the stand-in answers.
    pub fn set_mode(&self, mode: WebhookMode) {
        self.state
            .mode
            .store(mode as u8, std::sync::atomic::Ordering::Relaxed);
    }

    /// Stops serving, connections included, but stays registered: the apiserver's calls fail
    /// as they do when the webhook's pods are gone.
    pub async fn pause(&mut self) {
        self.handle.shutdown();
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.server).await;
        self.server.abort();
    }

    /// Serves again on the same address with the same certificate.
    pub async fn resume(&mut self) -> Result<()> {
        let listener = wait_for("the stand-in's port to be free again", STEP, || async {
            Ok(std::net::TcpListener::bind(self.addr).ok())
        })
        .await?;
        listener.set_nonblocking(true)?;
        self.handle = axum_server::Handle::new();
        self.server = serve_stand_in(
            listener,
            self.tls.clone(),
            self.handle.clone(),
            self.state.clone(),
        );
        Ok(())
    }

    /// Unregisters and stops the stand-in.
    pub async fn stop(self) -> Result<()> {
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        let _ = api.delete(&self.name, &DeleteParams::default()).await;
        self.server.abort();
        Ok(())
    }
}

impl Drop for MarkingWebhook {
    fn drop(&mut self) {
        // A failed test never reaches stop(): no configuration pointing nowhere is left behind.
        kosmos_e2e::delete_webhook_configuration_on_drop(&self.name);
    }
}

/// A webhook that is registered but not running: the apiserver refuses every executor Job of
/// the namespace with "failed calling webhook", as when plugin-webhook is down.
pub struct DeadWebhook {
    name: String,
    client: Client,
}

impl DeadWebhook {
    /// Registers a webhook for `namespace` at a port where nothing listens, and waits until the
    /// apiserver refuses executor Jobs because of it.
    pub async fn register(client: &Client, namespace: &str) -> Result<Self> {
        let host = std::env::var("KOSMOS_E2E_WEBHOOK_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "127.0.0.1".to_owned());
        // Bound a moment ago and released: nothing listens there.
        let port = std::net::TcpListener::bind((host.as_str(), 0))?
            .local_addr()?
            .port();
        let ca_key = rcgen::KeyPair::generate()?;
        let ca = rcgen::CertificateParams::new(Vec::<String>::new())?.self_signed(&ca_key)?;
        let name = format!("e2e-dead-{namespace}");
        let config = kosmos_e2e::executor_webhook_configuration(
            &name,
            namespace,
            &format!("https://{host}:{port}/mutate"),
            &ca.pem(),
            &["CREATE"],
        );
        let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        api.create(&PostParams::default(), &config).await?;
        let this = Self {
            name,
            client: client.clone(),
        };
        let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
        let probe: Job = serde_json::from_value(json!({
            "metadata": { "name": "webhook-probe", "labels": { contract::EXECUTOR_LABEL: "true" } },
            "spec": { "template": { "spec": {
                "restartPolicy": "Never",
                "containers": [{ "name": "x", "image": "registry.invalid/x" }],
            }}},
        }))?;
        wait_for("the apiserver to call the dead webhook", STEP, || async {
            let params = PostParams {
                dry_run: true,
                ..PostParams::default()
            };
            Ok(match jobs.create(&params, &probe).await {
                Err(kube::Error::Api(s)) if s.message.contains("failed calling webhook") => {
                    Some(())
                }
                _ => None,
            })
        })
        .await?;
        Ok(this)
    }

    /// Unregisters it.
    pub async fn stop(self) -> Result<()> {
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        api.delete(&self.name, &DeleteParams::default()).await?;
        Ok(())
    }
}

impl Drop for DeadWebhook {
    fn drop(&mut self) {
        kosmos_e2e::delete_webhook_configuration_on_drop(&self.name);
    }
}

/// Plugin name the stand-in denies, as the real webhook denies a plugin it cannot turn into a pod.
pub const DENIED_PLUGIN: &str = "denied";

async fn mutate(
    axum::extract::State(state): axum::extract::State<std::sync::Arc<StandIn>>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    match state.mode.load(std::sync::atomic::Ordering::Relaxed) {
        m if m == WebhookMode::Garbage as u8 => {
            return (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                "\u{0}{not an AdmissionReview",
            )
                .into_response();
        }
        m if m == WebhookMode::Slow as u8 => tokio::time::sleep(Duration::from_secs(9)).await,
        _ => {}
    }
    let Ok(review) = serde_json::from_slice::<Value>(&body) else {
        return axum::http::StatusCode::BAD_REQUEST.into_response();
    };
    mark(review, &state.key).into_response()
}

/// The mark key Secret of the test's namespace (the operator's --mark-key-namespace): the
/// stand-in writes a fresh key, as the webhook does when the Secret is missing.
pub async fn mark_key(client: &Client, namespace: &str) -> Result<mark::Key> {
    let bytes = mark::generate()?;
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": { "name": mark::DEFAULT_KEY_SECRET },
        "data": { mark::KEY_DATA: base64::engine::general_purpose::STANDARD.encode(&bytes) },
    }))?;
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), namespace);
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(mark::Key::new(&bytes)?),
        // A second stand-in in the same namespace: use the key already there.
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let found = api.get(mark::DEFAULT_KEY_SECRET).await?;
            let bytes = found
                .data
                .and_then(|d| d.get(mark::KEY_DATA).cloned())
                .context("the mark key Secret has no key")?;
            Ok(mark::Key::new(&bytes.0)?)
        }
        Err(e) => Err(e.into()),
    }
}

fn mark(review: Value, key: &mark::Key) -> Json<Value> {
    let uid = review["request"]["uid"].clone();
    let plugin = &review["request"]["object"]["metadata"]["labels"][contract::PLUGIN_LABEL];
    if plugin.as_str() == Some(DENIED_PLUGIN) {
        return Json(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {
                "uid": uid,
                "allowed": false,
                "status": { "code": 403, "message": "plugin denied: spec.pluginSources.yaml.path.hostPath.path /etc is not under an allowed prefix" },
            },
        }));
    }
    let refuse = || {
        Json(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {
                "uid": uid,
                "allowed": false,
                "status": { "code": 400, "message": "the stand-in webhook could not read the Job's pod template" },
            },
        }))
    };
    // The pod runs on the real node and ends when the test says so (kosmos_e2e::finish_pod).
    let object = &review["request"]["object"];
    let Ok(Value::Array(mut ops)) = kosmos_e2e::obedient_job_patch(object) else {
        return refuse();
    };
    // Signed as the webhook signs: over the Job as it leaves, every change but the mark applied.
    let mut leaving = object.clone();
    let changed = serde_json::from_value::<json_patch::Patch>(Value::Array(ops.clone()))
        .ok()
        .and_then(|p| json_patch::patch(&mut leaving, &p).ok());
    let Some(job) = changed.and_then(|()| serde_json::from_value::<Job>(leaving).ok()) else {
        return refuse();
    };
    let signed = mark::sign(key, &job);
    let path = contract::INJECTED_ANNOTATION
        .replace('~', "~0")
        .replace('/', "~1");
    let has_annotations = object["metadata"]["annotations"].is_object();
    ops.insert(
        0,
        if has_annotations {
            json!({ "op": "add", "path": format!("/metadata/annotations/{path}"), "value": signed })
        } else {
            json!({ "op": "add", "path": "/metadata/annotations",
                    "value": { contract::INJECTED_ANNOTATION: signed } })
        },
    );
    let patch = Value::Array(ops);
    Json(json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {
            "uid": uid,
            "allowed": true,
            "patchType": "JSONPatch",
            "patch": base64::engine::general_purpose::STANDARD.encode(patch.to_string()),
        },
    }))
}

/// Creates (or replaces the spec of) plugin `name` from a JSON spec.
pub async fn apply_plugin(client: &Client, ns: &str, name: &str, spec: Value) -> Result<()> {
    let api: Api<VirtualClusterPlugin> = Api::namespaced(client.clone(), ns);
    let body = json!({
        "apiVersion": "kosmos.io/v1alpha1",
        "kind": "VirtualClusterPlugin",
        "metadata": { "name": name },
        "spec": spec,
    });
    api.patch(
        name,
        &PatchParams::apply(kosmos_e2e::FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .with_context(|| format!("applying plugin {name}"))?;
    Ok(())
}

/// A plugin spec that installs manifests from a URL; `extra` is merged in.
pub fn yaml_plugin(extra: Value) -> Value {
    let mut spec = json!({
        "pluginSources": { "yaml": { "path": { "uri": "https://example.com/plugin.yaml" } } },
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    spec
}

/// Creates VirtualCluster `name` in phase `phase` with `spec` (kubeconfig of the virtual
/// cluster added unless the spec sets one).
pub async fn create_vc(
    client: &Client,
    ns: &str,
    name: &str,
    phase: &str,
    spec: Value,
) -> Result<()> {
    let mut spec = spec;
    if spec.get("kubeconfig").is_none() {
        let text = kosmos_e2e::kubeconfig_yaml(Cluster::Virtual).await?;
        spec["kubeconfig"] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
    let mut body = json!({
        "apiVersion": "kosmos.io/v1alpha1",
        "kind": "VirtualCluster",
        "metadata": { "name": name },
        "spec": spec,
    });
    if !phase.is_empty() {
        // No status subresource (as in Kosmos): the status is written with the object.
        body["status"] = json!({ "phase": phase });
    }
    let vc: VirtualCluster = serde_json::from_value(body)?;
    Api::<VirtualCluster>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &vc)
        .await
        .with_context(|| format!("creating virtualcluster {name}"))?;
    Ok(())
}

/// Reads a VirtualCluster.
pub async fn get_vc(client: &Client, ns: &str, name: &str) -> Result<VirtualCluster> {
    Ok(Api::<VirtualCluster>::namespaced(client.clone(), ns)
        .get(name)
        .await?)
}

/// Waits until `check` holds for the VirtualCluster, and returns it.
pub async fn wait_vc(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    check: impl Fn(&VirtualCluster) -> bool,
) -> Result<VirtualCluster> {
    let api: Api<VirtualCluster> = Api::namespaced(client.clone(), ns);
    let result = wait_for(what, STEP, || async {
        let vc = api.get(name).await?;
        Ok(check(&vc).then_some(vc))
    })
    .await;
    match result {
        Ok(vc) => Ok(vc),
        Err(e) => {
            let vc = api.get_opt(name).await.ok().flatten();
            let status = vc
                .and_then(|v| v.status)
                .map(|s| serde_json::to_string_pretty(&s).unwrap_or_default());
            bail!("{e:#}\nlast status: {}", status.unwrap_or_default())
        }
    }
}

/// The status entry of `plugin`.
pub fn entry<'v>(vc: &'v VirtualCluster, plugin: &str) -> Option<&'v PluginStatus> {
    vc.status
        .as_ref()?
        .plugins
        .iter()
        .find(|e| e.name == plugin)
}

/// The phase of `plugin`'s status entry.
pub fn plugin_phase(vc: &VirtualCluster, plugin: &str) -> Option<PluginPhase> {
    entry(vc, plugin).map(|e| e.phase)
}

/// A condition's (status, reason, message).
pub fn condition(vc: &VirtualCluster, type_: &str) -> Option<(String, String, String)> {
    vc.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Executor Jobs of `plugin` in the namespace (any action), not being deleted.
pub async fn plugin_jobs(client: &Client, ns: &str, plugin: &str) -> Result<Vec<Job>> {
    let api: Api<Job> = Api::namespaced(client.clone(), ns);
    let list = api
        .list(&ListParams::default().labels(&format!(
            "{}=true,{}={}",
            contract::EXECUTOR_LABEL,
            contract::PLUGIN_LABEL,
            contract::label_value(plugin)
        )))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|j| j.metadata.deletion_timestamp.is_none())
        .collect())
}

/// Waits for the Job `plugin`'s status entry names (with `action`), and returns its name once
/// the Job exists.
pub async fn wait_job(
    client: &Client,
    ns: &str,
    plugin: &str,
    action: &str,
    attempt: u32,
) -> Result<String> {
    wait_for(
        &format!("{action} job attempt {attempt} of plugin {plugin}"),
        STEP,
        || async {
            let jobs = plugin_jobs(client, ns, plugin).await?;
            Ok(jobs
                .into_iter()
                .find(|j| {
                    j.labels().get(contract::ACTION_LABEL).map(String::as_str) == Some(action)
                        && j.annotations()
                            .get(contract::ATTEMPT_ANNOTATION)
                            .map(String::as_str)
                            == Some(attempt.to_string().as_str())
                })
                .map(|j| j.name_any()))
        },
    )
    .await
}

/// Tells the (next) pod of `job` to end with `outcome`, and waits until the kubelet says it did.
pub async fn finish(client: &Client, ns: &str, job: &str, outcome: PodOutcome) -> Result<()> {
    wait_for_job_pod_and_finish(client, ns, job, &outcome, STEP).await?;
    Ok(())
}

/// Tells the (next) pod of `job` to end with `outcome`, without waiting to see it end: for an
/// uninstall on delete, whose success lets the VirtualCluster go and the collector take the Job
/// and its pod, often before the kubelet's final status could be read.
pub async fn tell(client: &Client, ns: &str, job: &str, outcome: PodOutcome) -> Result<()> {
    kosmos_e2e::wait_for_job_pod_and_tell(client, ns, job, &outcome, STEP).await?;
    Ok(())
}

/// A pod that succeeded.
pub fn ok() -> PodOutcome {
    PodOutcome::Succeeded {
        message: "installed".into(),
    }
}

/// A pod that failed with `message` as its termination message.
pub fn fail(message: &str) -> PodOutcome {
    PodOutcome::Failed {
        exit_code: 1,
        message: message.into(),
    }
}

/// A free port on 127.0.0.1 (free a moment ago: good enough for a test's admin port).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// GET `path` from 127.0.0.1:`port` over plain HTTP/1.0; (status code, body).
pub async fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut text)).await??;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

/// Removes the operator's finalizer from every VirtualCluster of a test namespace when dropped,
/// so that a test that ends (or fails) after its operator stopped never leaves the namespace
/// stuck in Terminating (and never leaves work for another operator on the same cluster).
pub struct FinalizerSweep {
    namespace: String,
}

impl FinalizerSweep {
    /// A sweep of `namespace`.
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
        }
    }
}

impl Drop for FinalizerSweep {
    fn drop(&mut self) {
        let ns = self.namespace.clone();
        kosmos_e2e::cleanup_on_drop(
            &format!("finalizers in {ns}"),
            Duration::from_secs(15),
            move || async move {
                let api: Api<VirtualCluster> = Api::namespaced(kosmos_e2e::host().await?, &ns);
                for vc in api.list(&ListParams::default()).await?.items {
                    if vc.finalizers().iter().any(|f| f == contract::FINALIZER) {
                        let patch = json!({ "metadata": { "finalizers": null } });
                        // One that is already gone or changed is no reason to stop sweeping.
                        let _ = api
                            .patch(
                                &vc.name_any(),
                                &PatchParams::default(),
                                &Patch::Merge(patch),
                            )
                            .await;
                    }
                }
                Ok(())
            },
        );
    }
}
