//! Test support for the end-to-end tests: clients for the local cluster that `e2e/cluster.sh`
//! runs (a real node plus a second control plane; or your own clusters through `KUBECONFIG`),
//! throw-away namespaces, clients that act as another user or a ServiceAccount, CRD installation,
//! bounded waits, pods whose end the test decides, and claims filled with `kubectl cp`.
//!
//! Which clusters the tests use:
//! - `KUBECONFIG` unset: the local control planes. The first call in a process runs
//!   `e2e/cluster.sh up` (building the binaries if needed), which is idempotent and locked, so
//!   parallel tests and test binaries start them once. They keep running afterwards; `make test`
//!   (`e2e/with-cluster.sh`) stops them again, `make cluster-down` does too.
//! - `KUBECONFIG` set: the host cluster is that kubeconfig's current context, and the virtual
//!   cluster is `KOSMOS_E2E_VIRTUAL_KUBECONFIG`, or the same cluster when that is unset.

#![warn(missing_docs)]

mod cleanup;
mod crds;
mod leftovers;
mod namespace;
mod node;
mod pods;
mod wait;
mod webhook;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::PostParams;
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use tokio::sync::OnceCell;

pub use cleanup::{
    cleanup_on_drop, delete_webhook_configuration, delete_webhook_configuration_on_drop,
};
pub use crds::{apply_yaml, chart_crd_dir, dynamic_api, install_crds, load_crds, parse_yaml};
pub use leftovers::wait_for_nothing_left;
pub use namespace::{TEST_NAMESPACE_LABEL, TestNamespace};
pub use node::{
    STORAGE_CLASS, busybox_image, cached_tool_dirs, executor_image, fill_claim, kubectl,
    kubectl_binary, wait_for_pod_ready, webhook_host, webhook_listen_addr,
};
pub use pods::{
    OUTCOME_ANNOTATION, PodOutcome, finish_pod, job_pods, make_obedient, obedient_job_patch,
    tell_pod, termination_message, wait_for_job_condition, wait_for_job_pod,
    wait_for_job_pod_and_finish, wait_for_job_pod_and_tell,
};
pub use wait::{DEFAULT_TIMEOUT, wait_for};
pub use webhook::executor_webhook_configuration;

/// Environment variable with the virtual cluster's kubeconfig when tests run against your own
/// clusters (with `KUBECONFIG` for the host).
pub const VIRTUAL_KUBECONFIG_ENV: &str = "KOSMOS_E2E_VIRTUAL_KUBECONFIG";

/// Field manager for everything the tests apply, so their fields are told apart from the
/// operator's.
pub const FIELD_MANAGER: &str = "kosmos-e2e";

/// Which control plane a test talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cluster {
    /// Where the CRDs, VirtualClusters, plugins, executor Jobs, the operator and webhook live.
    Host,
    /// The cluster that plugins install into.
    Virtual,
}

/// The `e2e/` folder of the checkout (scripts, state).
pub fn e2e_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The root of the checkout (charts, crates).
pub fn repo_dir() -> PathBuf {
    let e2e = e2e_dir();
    e2e.parent().map(PathBuf::from).unwrap_or(e2e)
}

/// Where `e2e/cluster.sh` keeps kubeconfigs, logs and pids (same override as the script).
fn state_dir() -> PathBuf {
    std::env::var_os("KOSMOS_E2E_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| e2e_dir().join(".state"))
}

/// The process id of a local control-plane component (`host-apiserver`, `etcd`,
/// `host-controller-manager`, `scheduler`: the names of `e2e/cluster.sh`'s pid files), if the
/// local control planes are in use and it runs. `None` against a user's own cluster.
pub fn local_component_pid(component: &str) -> Option<u32> {
    if uses_own_cluster() {
        return None;
    }
    let text =
        std::fs::read_to_string(state_dir().join("pids").join(format!("{component}.pid"))).ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    // As cluster.sh's is_ours: a pid file can outlive its process and the pid be reused; every
    // component names the state folder in its arguments.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let state = state_dir();
    String::from_utf8_lossy(&cmdline)
        .contains(state.to_string_lossy().as_ref())
        .then_some(pid)
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// True when the tests run against clusters the user named, not the local control planes
/// (`e2e/with-cluster.sh` exports `KUBECONFIG` too, pointing at the local host kubeconfig).
pub fn uses_own_cluster() -> bool {
    let Some(paths) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) else {
        return false;
    };
    let local = state_dir().join("host.kubeconfig");
    let canonical = |p: &std::path::Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    std::env::split_paths(&paths)
        .next()
        .is_some_and(|first| canonical(&first) != canonical(&local))
}

/// The kubeconfig file of `cluster`, starting the local control planes first if they are used.
///
/// With `KUBECONFIG` holding several paths, the host's is the first one (as kubectl merges them,
/// the first file that sets the current context wins).
pub async fn kubeconfig_path(cluster: Cluster) -> Result<PathBuf> {
    if cluster == Cluster::Virtual
        && let Some(path) = env_path(VIRTUAL_KUBECONFIG_ENV)
    {
        return Ok(path);
    }
    if let Some(paths) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        return std::env::split_paths(&paths)
            .next()
            .context("KUBECONFIG is set but names no file");
    }
    ensure_local_cluster().await?;
    Ok(state_dir().join(match cluster {
        Cluster::Host => "host.kubeconfig",
        Cluster::Virtual => "virtual.kubeconfig",
    }))
}

/// The text of `cluster`'s admin kubeconfig: what a VirtualCluster's `spec.kubeconfig` carries
/// (base64-encoded) so that the operator and executor Jobs reach the virtual cluster.
pub async fn kubeconfig_yaml(cluster: Cluster) -> Result<String> {
    let path = kubeconfig_path(cluster).await?;
    tokio::fs::read_to_string(&path)
        .await
        .with_context(|| format!("reading kubeconfig {}", path.display()))
}

/// Client configuration for `cluster`'s admin (or the user's own credentials).
pub async fn config(cluster: Cluster) -> Result<Config> {
    let virtual_override =
        cluster == Cluster::Virtual && env_path(VIRTUAL_KUBECONFIG_ENV).is_some();
    if uses_own_cluster() && !virtual_override {
        // Honours every path in KUBECONFIG, merged the way kubectl merges them.
        return Config::from_kubeconfig(&KubeConfigOptions::default())
            .await
            .context("loading the kubeconfig named by KUBECONFIG");
    }
    let path = kubeconfig_path(cluster).await?;
    let kubeconfig = Kubeconfig::read_from(&path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", path.display()))
}

/// Environment variable naming a folder with the host apiserver's admission client credentials
/// when the tests run against your own cluster: `admission-client-ca.crt` (the CA a webhook
/// trusts with `--client-ca`), `admission-client.crt` and `admission-client.key` (what the
/// apiserver presents to webhooks through its admission configuration).
pub const ADMISSION_CLIENT_DIR_ENV: &str = "KOSMOS_E2E_ADMISSION_CLIENT_DIR";

/// Where the host apiserver's admission client CA, certificate and key are (see
/// [`ADMISSION_CLIENT_DIR_ENV`]); for the local control planes, `e2e/cluster.sh` makes them in
/// its `pki/` and gives the apiservers an admission configuration that presents them.
pub async fn admission_client_dir() -> Result<PathBuf> {
    let dir = match env_path(ADMISSION_CLIENT_DIR_ENV) {
        Some(dir) => dir,
        None if uses_own_cluster() => bail!(
            "set {ADMISSION_CLIENT_DIR_ENV}: with your own cluster the tests cannot know the \
             client certificate its apiserver presents to admission webhooks"
        ),
        None => {
            ensure_local_cluster().await?;
            state_dir().join("pki")
        }
    };
    let ca = dir.join("admission-client-ca.crt");
    anyhow::ensure!(
        ca.is_file(),
        "{} is missing: restart the local control planes (e2e/cluster.sh down; up) so the \
         apiservers get their admission client certificate",
        ca.display()
    );
    Ok(dir)
}

/// An admin client for `cluster`. Clients are cheap and tied to the Tokio runtime that made them,
/// so every test makes its own.
pub async fn client(cluster: Cluster) -> Result<Client> {
    Client::try_from(config(cluster).await?).context("building a Kubernetes client")
}

/// An admin client for the host cluster.
pub async fn host() -> Result<Client> {
    client(Cluster::Host).await
}

/// An admin client for the virtual cluster.
pub async fn virtual_cluster() -> Result<Client> {
    client(Cluster::Virtual).await
}

/// A user the tests act as, through impersonation by the admin credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The user name the apiserver (and an admission webhook) sees.
    pub user: String,
    /// The groups it sees.
    pub groups: Vec<String>,
}

impl Identity {
    /// A plain authenticated user, e.g. `Identity::user("mallory")`.
    pub fn user(name: &str) -> Self {
        Self {
            user: name.to_owned(),
            groups: vec!["system:authenticated".to_owned()],
        }
    }

    /// ServiceAccount `namespace/name`, with the user name and groups its token would carry.
    pub fn service_account(namespace: &str, name: &str) -> Self {
        Self {
            user: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".to_owned(),
            ],
        }
    }

    /// Adds a group (e.g. `system:masters` to act as an admin under another name).
    pub fn with_group(mut self, group: &str) -> Self {
        self.groups.push(group.to_owned());
        self
    }
}

/// A client for `cluster` that acts as `identity` (Impersonate-User/-Group headers). The admin
/// may impersonate anyone; RBAC and admission then see `identity`, not the admin.
pub async fn client_as(cluster: Cluster, identity: &Identity) -> Result<Client> {
    let mut config = config(cluster).await?;
    config.auth_info.impersonate = Some(identity.user.clone());
    config.auth_info.impersonate_groups = Some(identity.groups.clone());
    Client::try_from(config).context("building an impersonating Kubernetes client")
}

/// Requests a token for ServiceAccount `namespace/name` through the TokenRequest API, valid for
/// ten minutes and for the apiserver's own audience.
pub async fn service_account_token(client: &Client, namespace: &str, name: &str) -> Result<String> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let response: TokenRequest = api
        .create_subresource("token", name, &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token for serviceaccount {namespace}/{name}"))?;
    match response.status {
        Some(status) if !status.token.is_empty() => Ok(status.token),
        _ => bail!("the TokenRequest for serviceaccount {namespace}/{name} returned no token"),
    }
}

/// A client for `cluster` that authenticates with a bearer `token` only (no client certificate),
/// as a pod with that ServiceAccount would.
pub async fn client_with_token(cluster: Cluster, token: &str) -> Result<Client> {
    let mut config = config(cluster).await?;
    // AuthInfo keeps the token in a secret-string type; going through serde avoids depending on
    // that crate just to build one.
    config.auth_info = serde_json::from_value::<AuthInfo>(serde_json::json!({ "token": token }))
        .context("building token credentials")?;
    Client::try_from(config).context("building a token Kubernetes client")
}

/// The outcome of starting the local control planes, shared by every test in the process.
static LOCAL_CLUSTER: OnceCell<Result<(), String>> = OnceCell::const_new();

/// Bound on `cluster.sh up`: generous because a first run builds Kubernetes from source.
fn up_timeout() -> Duration {
    let secs = std::env::var("KOSMOS_E2E_UP_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(3600);
    Duration::from_secs(secs)
}

/// Runs `e2e/cluster.sh up` once per process. The script itself is idempotent and holds a file
/// lock, so concurrent test binaries are safe too.
async fn ensure_local_cluster() -> Result<()> {
    let outcome = LOCAL_CLUSTER
        .get_or_init(|| async { start_local_cluster().await.map_err(|e| format!("{e:#}")) })
        .await;
    outcome.clone().map_err(anyhow::Error::msg)
}

async fn start_local_cluster() -> Result<()> {
    let script = e2e_dir().join("cluster.sh");
    let timeout = up_timeout();
    // Output goes straight to the terminal (not captured by the test harness) so that a long
    // first build shows progress.
    let mut child = tokio::process::Command::new("bash")
        .arg(&script)
        .arg("up")
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("running {}", script.display()))?;
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => status.with_context(|| format!("waiting for {}", script.display()))?,
        Err(_) => bail!(
            "{} up did not finish within {timeout:?}; see e2e/.state/logs/",
            script.display()
        ),
    };
    if !status.success() {
        bail!(
            "{} up failed ({status}); its output is above, component logs are in e2e/.state/logs/",
            script.display()
        );
    }
    Ok(())
}
