//! Wiring: settings (flags with environment variables), the watch-fed caches, the TLS admission
//! server and the plain admin server (/healthz, /readyz, /metrics).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use futures::{FutureExt as _, StreamExt as _};
use kosmos_api::{VirtualCluster, VirtualClusterPlugin, VirtualClusterSpec};
use kosmos_runtime::LogFormat;
use kosmos_runtime::admin::{self, AdminPort, Health};
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use tokio::task::JoinHandle;

use crate::admission::{self, AdmissionState, Cache};
use crate::bootstrap::{self, BootstrapConfig};
use crate::limits;
use crate::mark_key::{self, KeySecret, MarkKey};
use crate::metrics::Metrics;
use crate::mutation::{RecursiveReadOnly, Settings};
use crate::tls;

/// Default of `--max-connections`: room for 128 reconciliations of the operator at once (8 Job
/// creates each, about one connection per review in flight), where its default is 32. A busy
/// connection costs about 40 KiB (RSS 17 MiB at rest, 55 MiB with 1,000 under load), well within
/// the chart's 256 MiB limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// The operator's service account, as the chart installs it.
pub const DEFAULT_OPERATOR_USER: &str =
    "system:serviceaccount:kosmos-system:virtual-cluster-operator";

/// Settings of `plugin-webhook serve`; every flag also reads an environment variable.
#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    /// Address of the HTTPS admission endpoint (POST /mutate).
    #[arg(long, env = "PLUGIN_WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Address of the plain-HTTP admin endpoint (/healthz, /readyz, /metrics).
    #[arg(
        long,
        env = "PLUGIN_WEBHOOK_ADMIN_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub admin_listen: SocketAddr,
    /// Serving certificate (PEM chain, leaf first); re-read when it changes.
    #[arg(
        long,
        env = "PLUGIN_WEBHOOK_TLS_CERT",
        default_value = "/etc/plugin-webhook/tls/tls.crt"
    )]
    pub tls_cert: PathBuf,
    /// Private key of the serving certificate (PEM); re-read when it changes.
    #[arg(
        long,
        env = "PLUGIN_WEBHOOK_TLS_KEY",
        default_value = "/etc/plugin-webhook/tls/tls.key"
    )]
    pub tls_key: PathBuf,
    /// How often to look for a rotated certificate, in seconds.
    #[arg(long, env = "PLUGIN_WEBHOOK_CERT_POLL_SECONDS", default_value_t = 10)]
    pub cert_poll_seconds: u64,
    /// Seconds a client has for the TLS handshake, then for its first request, then for the
    /// headers of each request (an idle kept-alive HTTP/1 connection included); then it is closed.
    #[arg(
        long,
        env = "PLUGIN_WEBHOOK_HEADER_READ_TIMEOUT_SECONDS",
        default_value_t = 10
    )]
    pub header_read_timeout_seconds: u64,
    /// Seconds a whole request (its body included) may take to arrive and be answered.
    #[arg(
        long,
        env = "PLUGIN_WEBHOOK_REQUEST_TIMEOUT_SECONDS",
        default_value_t = 30
    )]
    pub request_timeout_seconds: u64,
    /// Open connections to the admission endpoint at most; more are closed at once. The
    /// apiserver opens about one per review in flight: keep this above the operator's creates in
    /// flight (8 × its --concurrent-reconciles per watched namespace).
    #[arg(long, env = "PLUGIN_WEBHOOK_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Mutual TLS: PEM file of the CA(s) whose client certificates are accepted; every client
    /// must present one (the apiserver does, through its admission configuration). Unset: any
    /// client that reaches the port is served, and the user a review names is taken on trust.
    #[arg(long, env = "PLUGIN_WEBHOOK_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// The user whose executor Jobs are mutated; executor Jobs from anyone else are denied.
    #[arg(long, env = "PLUGIN_WEBHOOK_OPERATOR_USER", default_value = DEFAULT_OPERATOR_USER)]
    pub operator_user: String,
    /// Folders hostPath sources must lie under (comma-separated); empty (the default) allows no
    /// hostPath, `/` allows any path.
    #[arg(
        long,
        env = "PLUGIN_WEBHOOK_ALLOWED_HOST_PATH_PREFIXES",
        value_delimiter = ','
    )]
    pub allowed_host_path_prefixes: Vec<String>,
    /// recursiveReadOnly of the plugin's storage mounts (Kubernetes 1.33+).
    #[arg(
        long,
        env = "PLUGIN_WEBHOOK_RECURSIVE_READ_ONLY",
        value_enum,
        default_value = "if-possible"
    )]
    pub recursive_read_only: RecursiveReadOnly,
    /// Watch plugins and VirtualClusters in these namespaces only (comma-separated, or the flag
    /// repeated); none or empty watches all. Each gets its own watches, so the RBAC may be Roles
    /// in just these.
    #[arg(
        long,
        env = "PLUGIN_WEBHOOK_WATCH_NAMESPACE",
        value_delimiter = ',',
        value_parser = kosmos_api::validation::watched_namespace
    )]
    pub watch_namespace: Vec<String>,
    /// Log format.
    #[arg(
        long,
        env = "PLUGIN_WEBHOOK_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Bootstrap mode: keep a self-made CA and serving certificate in this Secret (shared by all
    /// replicas), write them to --tls-cert/--tls-key, renew them, and set the caBundle of
    /// --webhook-configuration. Unset: serve the files as they are (cert-manager, the chart).
    #[arg(long, env = "PLUGIN_WEBHOOK_BOOTSTRAP_SECRET")]
    pub bootstrap_secret: Option<String>,
    /// Secret (in --namespace) with the key the webhook signs its mark on executor Jobs with; the
    /// operator reads the same Secret to verify marks. Created, or filled with a random key, if
    /// it holds none. Empty: marks are not signed and the operator counts no Job (tests only).
    #[arg(
        long,
        env = "PLUGIN_WEBHOOK_MARK_KEY_SECRET",
        default_value = kosmos_api::mark::DEFAULT_KEY_SECRET
    )]
    pub mark_key_secret: Option<String>,
    /// The webhook's namespace (bootstrap Secret, mark key Secret, Service DNS names).
    #[arg(
        long,
        env = "PLUGIN_WEBHOOK_NAMESPACE",
        default_value = "kosmos-system"
    )]
    pub namespace: String,
    /// The webhook's Service name (DNS names of a bootstrap certificate).
    #[arg(long, env = "PLUGIN_WEBHOOK_SERVICE", default_value = "plugin-webhook")]
    pub service: String,
    /// MutatingWebhookConfiguration whose caBundle bootstrap mode keeps up to date.
    #[arg(
        long,
        env = "PLUGIN_WEBHOOK_CONFIGURATION",
        default_value = "plugin-webhook"
    )]
    pub webhook_configuration: String,
    /// Validity of bootstrap certificates, in days.
    #[arg(
        long,
        env = "PLUGIN_WEBHOOK_BOOTSTRAP_CERT_DAYS",
        default_value_t = 365
    )]
    pub bootstrap_cert_days: u32,
    /// Renew bootstrap certificates when fewer days than this are left.
    #[arg(
        long,
        env = "PLUGIN_WEBHOOK_BOOTSTRAP_RENEW_DAYS",
        default_value_t = 30
    )]
    pub bootstrap_renew_days: u32,
}

impl ServeArgs {
    /// Settings for a webhook on loopback ports chosen by the system, serving the given files,
    /// with every other setting at its default: for tests and local runs.
    pub fn local(tls_cert: PathBuf, tls_key: PathBuf) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls_cert,
            tls_key,
            cert_poll_seconds: 10,
            client_ca: None,
            header_read_timeout_seconds: 10,
            request_timeout_seconds: 30,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            operator_user: DEFAULT_OPERATOR_USER.to_owned(),
            allowed_host_path_prefixes: Vec::new(),
            recursive_read_only: RecursiveReadOnly::default(),
            watch_namespace: Vec::new(),
            log_format: LogFormat::Text,
            bootstrap_secret: None,
            mark_key_secret: None,
            namespace: "kosmos-system".to_owned(),
            service: "plugin-webhook".to_owned(),
            webhook_configuration: "plugin-webhook".to_owned(),
            bootstrap_cert_days: 365,
            bootstrap_renew_days: 30,
        }
    }

    /// Bootstrap-mode settings, when --bootstrap-secret is set.
    pub fn bootstrap(&self) -> Option<BootstrapConfig> {
        let secret = self.bootstrap_secret.clone().filter(|s| !s.is_empty())?;
        Some(BootstrapConfig {
            namespace: self.namespace.clone(),
            secret,
            webhook_configuration: self.webhook_configuration.clone(),
            names: tls::dev_names(&self.service, &self.namespace),
            days: self.bootstrap_cert_days,
            renew_before_days: self.bootstrap_renew_days,
        })
    }

    /// The mutation settings these flags give.
    pub fn settings(&self) -> Settings {
        Settings {
            allowed_host_path_prefixes: self
                .allowed_host_path_prefixes
                .iter()
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect(),
            recursive_read_only: self.recursive_read_only,
            // Loaded from the Secret at run time (mark_key::run).
            mark_key: None,
        }
    }

    /// The mark key Secret, when --mark-key-secret is set.
    pub fn mark_key_secret(&self) -> Option<KeySecret> {
        let name = self.mark_key_secret.clone().filter(|s| !s.is_empty())?;
        Some(KeySecret {
            namespace: self.namespace.clone(),
            name,
        })
    }
}

/// Objects per page of the caches' initial lists.
const LIST_PAGE_SIZE: u32 = 50;

/// Watch-fed caches of plugins and VirtualClusters, and the task that feeds them: one watch of
/// each kind over every namespace when `namespaces` names none (empty names ignored), else one
/// per namespace.
pub fn caches(
    client: &Client,
    namespaces: &[String],
) -> (
    Cache<VirtualClusterPlugin>,
    Cache<VirtualCluster>,
    JoinHandle<()>,
) {
    let mut scopes: Vec<Option<String>> = kosmos_api::validation::watched_namespaces(namespaces)
        .into_iter()
        .map(Some)
        .collect();
    if scopes.is_empty() {
        scopes.push(None);
    }
    let mut feeds = Vec::new();
    let plugins = cache(
        client,
        &scopes,
        "VirtualClusterPlugin",
        slim_plugin,
        &mut feeds,
    );
    // Of a VirtualCluster the mutation needs its name and its pluginOptions, nothing more. Its
    // spec also carries an admin kubeconfig, which the webhook has no business holding (and which
    // made up most of its memory with 1,000 of them): dropped as each object arrives.
    let virtual_clusters = cache(
        client,
        &scopes,
        "VirtualCluster",
        slim_virtual_cluster,
        &mut feeds,
    );
    let task = tokio::spawn(async move {
        futures::future::join_all(feeds).await;
    });
    (plugins, virtual_clusters, task)
}

/// A cache of `kind` (named in watch errors) with one watch per scope (`None`: every
/// namespace), each object slimmed as it arrives; the watches' feeds go onto `feeds`.
fn cache<K>(
    client: &Client,
    scopes: &[Option<String>],
    kind: &'static str,
    slim: fn(&mut K),
    feeds: &mut Vec<futures::future::BoxFuture<'static, ()>>,
) -> Cache<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    // Small pages: a page of the initial list is held whole before each object is slimmed, and
    // the allocator keeps the peak. With 500 (the default) VirtualClusters a page, their
    // kubeconfigs alone left the webhook 8 MiB larger for good.
    let config = watcher::Config::default().page_size(LIST_PAGE_SIZE);
    let mut stores = Vec::new();
    for scope in scopes {
        let api: Api<K> = match scope {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let (store, writer) = reflector::store();
        let stream = reflector::reflector(writer, watcher(api, config.clone()).modify(slim))
            .default_backoff();
        feeds.push(
            stream
                .for_each(move |event| {
                    log_watch_error(kind, event.err());
                    std::future::ready(())
                })
                .boxed(),
        );
        stores.push((scope.clone(), store));
    }
    Cache::new(stores)
}

/// Drops what the mutation never reads from a cached plugin: managed fields, annotations (kubectl's
/// last-applied-configuration is a second copy of the spec).
pub fn slim_plugin(plugin: &mut VirtualClusterPlugin) {
    plugin.metadata.managed_fields = None;
    plugin.metadata.annotations = None;
}

/// The cached form of a VirtualCluster: its metadata without managed fields and annotations,
/// and of its spec only the `pluginOptions` (they reach the install, and their hash is part of
/// the Job's spec hash); no status.
pub fn slim_virtual_cluster(virtual_cluster: &mut VirtualCluster) {
    virtual_cluster.metadata.managed_fields = None;
    virtual_cluster.metadata.annotations = None;
    virtual_cluster.spec = VirtualClusterSpec {
        plugin_options: virtual_cluster.spec.plugin_options.take(),
        ..Default::default()
    };
    virtual_cluster.status = None;
}

fn log_watch_error(kind: &'static str, error: Option<watcher::Error>) {
    if let Some(e) = error {
        tracing::warn!(kind, error = %e, "watch failed; retrying with backoff");
    }
}

/// A running webhook: where it listens and how to stop it.
pub struct Running {
    /// Bound address of the HTTPS admission endpoint.
    pub addr: SocketAddr,
    /// Bound address of the admin endpoint.
    pub admin_addr: SocketAddr,
    /// Caches, settings and metrics of the admission endpoint.
    pub state: Arc<AdmissionState>,
    handle: axum_server::Handle<SocketAddr>,
    /// The admission server, kept apart so a graceful stop can let it drain.
    server: JoinHandle<()>,
    /// Caches, certificate watcher, admin server: aborted on stop.
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Starts stopping without waiting: no new connections, open ones get `grace`; the
    /// background tasks end now.
    pub fn shutdown(&self, grace: Duration) {
        self.handle.graceful_shutdown(Some(grace));
        for task in &self.tasks {
            task.abort();
        }
    }

    /// Stops and waits (at most `grace` and a second) for the admission server to drain, so a
    /// review in flight during a rollout still gets its answer.
    pub async fn stop(mut self, grace: Duration) {
        self.shutdown(grace);
        let _ = tokio::time::timeout(grace + Duration::from_secs(1), &mut self.server).await;
    }

    /// Returns only if the webhook stopped working: any of its tasks ended, which never happens
    /// while it is healthy.
    pub async fn wait(&mut self) -> Result<()> {
        let tasks = self
            .tasks
            .iter_mut()
            .chain(std::iter::once(&mut self.server));
        let (result, index, _) = futures::future::select_all(tasks).await;
        match result {
            Ok(()) => Err(anyhow!("webhook task {index} stopped; see the log above")),
            Err(e) => Err(anyhow!("webhook task {index} failed: {e}")),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.handle.shutdown();
        self.server.abort();
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The admin port starts only after the TLS endpoint is bound, so being up implies that;
/// readiness adds the caches and the mark key.
impl Health for AdmissionState {
    fn ready(&self) -> Result<(), String> {
        if !self.is_synced() {
            Err("caches of plugins and VirtualClusters not synced".to_owned())
        } else if !self.mark_key.is_ready() {
            Err("no mark key loaded from its Secret yet".to_owned())
        } else {
            Ok(())
        }
    }

    fn metrics(&self) -> String {
        self.metrics.encode()
    }
}

/// Starts the caches, the TLS admission server and the admin server; returns once both servers
/// listen. The serving certificate must load, or this fails.
pub async fn start(args: &ServeArgs, client: Client) -> Result<Running> {
    let metrics = Arc::new(Metrics::default());
    let mut tasks = Vec::new();
    if let Some(config) = args.bootstrap() {
        bootstrap::reconcile(&client, &config, &args.tls_cert, &args.tls_key)
            .await
            .context("bootstrapping certificates")?;
        let (client, cert, key) = (client.clone(), args.tls_cert.clone(), args.tls_key.clone());
        tasks.push(tokio::spawn(async move {
            // Hourly is far more often than a renewal window of days needs, and cheap.
            let mut ticker = tokio::time::interval(Duration::from_secs(3600));
            ticker.tick().await;
            loop {
                ticker.tick().await;
                if let Err(e) = bootstrap::reconcile(&client, &config, &cert, &key).await {
                    tracing::warn!(error = %format!("{e:#}"), "bootstrap certificate round failed; retrying in an hour");
                }
            }
        }));
    }
    let loaded = tls::load(&args.tls_cert, &args.tls_key)?;
    metrics.cert_expiry.set(loaded.not_after.as_second());
    let fingerprint = loaded.fingerprint();
    let resolver = Arc::new(tls::CertResolver::new(loaded.key));
    let client_ca = args
        .client_ca
        .as_deref()
        .filter(|p| !p.as_os_str().is_empty());
    let rustls_config = tls::server_config(resolver.clone(), client_ca)?;

    let (plugins, virtual_clusters, cache_task) = caches(&client, &args.watch_namespace);
    let mark_key = Arc::new(match args.mark_key_secret() {
        Some(secret) => MarkKey::from_secret(secret),
        None => MarkKey::default(),
    });
    let key_task = tokio::spawn(mark_key::run(client.clone(), mark_key.clone()));
    let state = Arc::new(AdmissionState {
        mark_key,
        plugins: plugins.clone(),
        virtual_clusters: virtual_clusters.clone(),
        settings: args.settings(),
        operator_user: args.operator_user.clone(),
        metrics: metrics.clone(),
        synced: AtomicBool::new(false),
    });
    let sync_state = state.clone();
    let sync_task = tokio::spawn(async move {
        if plugins.wait_until_ready().await.is_ok()
            && virtual_clusters.wait_until_ready().await.is_ok()
        {
            sync_state.synced.store(true, Ordering::Release);
            tracing::info!("caches of plugins and VirtualClusters synced");
        }
        // Stay alive: `Running::wait` treats the end of any task as the end of the webhook.
        std::future::pending::<()>().await;
    });

    let expiry_metrics = metrics.clone();
    let cert_task = tokio::spawn(tls::watch(
        resolver,
        args.tls_cert.clone(),
        args.tls_key.clone(),
        fingerprint,
        Duration::from_secs(args.cert_poll_seconds.max(1)),
        move |loaded| {
            expiry_metrics.cert_expiry.set(loaded.not_after.as_second());
        },
    ));

    let handle = axum_server::Handle::new();
    // Every stage a client controls has a deadline, and the open connections a cap, so idle or
    // one-byte-a-second clients cannot tie the server up (axum-server turns hyper's header read
    // timeout off unless asked).
    let header_timeout = Duration::from_secs(args.header_read_timeout_seconds.max(1));
    let request_timeout = Duration::from_secs(args.request_timeout_seconds.max(1));
    let app = admission::router(state.clone()).layer(axum::middleware::from_fn_with_state(
        request_timeout,
        limits::request_deadline,
    ));
    let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(
        axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(rustls_config)),
    )
    .handshake_timeout(header_timeout)
    .acceptor(NoDelay(limits::ConnectionLimit::new(
        args.max_connections,
        metrics.connections_open.clone(),
        metrics.connections_refused.clone(),
    )));
    let mut server = axum_server::bind(args.listen)
        .acceptor(acceptor)
        .first_request_timeout(header_timeout)
        .handle(handle.clone());
    server
        .http_builder()
        .http1()
        .header_read_timeout(Some(header_timeout));
    // HTTP/2 has no header timeout; pings find dead peers, and the connection cap bounds the rest.
    server
        .http_builder()
        .http2()
        .keep_alive_interval(Some(header_timeout))
        .keep_alive_timeout(header_timeout);
    let server_task = tokio::spawn(async move {
        if let Err(e) = server.serve(app.into_make_service()).await {
            tracing::error!(error = %e, "the admission server stopped");
        }
    });
    let addr = tokio::time::timeout(Duration::from_secs(10), handle.listening())
        .await
        .ok()
        .flatten()
        .with_context(|| format!("binding the admission endpoint to {}", args.listen))?;

    let AdminPort {
        addr: admin_addr,
        task: admin_task,
    } = admin::serve(args.admin_listen, state.clone()).await?;
    tracing::info!(
        %addr,
        %admin_addr,
        operator_user = %args.operator_user,
        client_ca = %client_ca.map(|p| p.display().to_string()).unwrap_or_else(|| "none: any client is served".to_owned()),
        mark_key_secret = %args.mark_key_secret().map(|s| s.to_string()).unwrap_or_else(|| "none: marks are not signed".to_owned()),
        "plugin webhook listening"
    );
    Ok(Running {
        addr,
        admin_addr,
        state,
        handle,
        server: server_task,
        tasks: {
            tasks.extend([cache_task, sync_task, cert_task, admin_task, key_task]);
            tasks
        },
    })
}

/// Sets TCP_NODELAY on each accepted connection, then hands it on. An answer leaves as several
/// TLS records; with Nagle's algorithm the last one waited for the client's delayed ACK (40 ms on
/// Linux), which was the webhook's p99 at fixed rates over HTTP/1.1.
#[derive(Clone)]
struct NoDelay<A>(A);

impl<A, S> axum_server::accept::Accept<tokio::net::TcpStream, S> for NoDelay<A>
where
    A: axum_server::accept::Accept<tokio::net::TcpStream, S>,
{
    type Stream = A::Stream;
    type Service = A::Service;
    type Future = A::Future;

    fn accept(&self, stream: tokio::net::TcpStream, service: S) -> Self::Future {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        self.0.accept(stream, service)
    }
}
