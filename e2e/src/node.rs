//! What tests need to know about the node their pods run on: the images it has, the address at
//! which its apiserver reaches a webhook served by the test process, the cached tools, and a
//! claim filled with files the way the design's walk-through does it (`kubectl cp`).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use crate::{Cluster, wait_for};

/// The StorageClass the design document's claims use; the local cluster serves it with a real
/// dynamic provisioner.
pub const STORAGE_CLASS: &str = "openebs-hostpath";

fn env_or(name: &str, default: impl FnOnce() -> String) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(default)
}

/// The busybox image on the node (`e2e/images.sh`; on your own cluster, load it with
/// `kind load image-archive`), overridden by `KOSMOS_E2E_BUSYBOX_IMAGE`.
pub fn busybox_image() -> String {
    env_or("KOSMOS_E2E_BUSYBOX_IMAGE", || {
        "localhost/kosmos-e2e/busybox:1".into()
    })
}

/// The executor image on the node: `make images` builds it (`e2e/images.sh` builds a stand-in of
/// the same name until then), overridden by `KOSMOS_E2E_EXECUTOR_IMAGE`.
pub fn executor_image() -> String {
    env_or("KOSMOS_E2E_EXECUTOR_IMAGE", || {
        format!(
            "localhost/kosmos/plugin-executor:{}",
            env!("CARGO_PKG_VERSION")
        )
    })
}

/// The address at which the apiserver reaches a webhook served by this test process:
/// `KOSMOS_E2E_WEBHOOK_HOST` if set (`e2e/cluster.sh env` sets it; with your own cluster, an
/// address of this machine its apiserver reaches), else the machine's end of the local cluster's
/// veth as `e2e/cluster.sh` recorded it, else loopback.
pub fn webhook_host() -> String {
    env_or("KOSMOS_E2E_WEBHOOK_HOST", || {
        std::fs::read_to_string(crate::state_dir().join("webhook-host"))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "127.0.0.1".into())
    })
}

/// Where a test's webhook listens: [`webhook_host`] on a free port, or every interface when the
/// host is a name rather than an address.
pub fn webhook_listen_addr() -> SocketAddr {
    let ip = webhook_host()
        .parse::<IpAddr>()
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    SocketAddr::new(ip, 0)
}

/// Folders holding kubectl, helm and kustomize as `e2e/build.sh` caches them (for tests that
/// run the executor script on this machine).
pub fn cached_tool_dirs() -> Vec<PathBuf> {
    let versions =
        std::fs::read_to_string(crate::e2e_dir().join("versions.env")).unwrap_or_default();
    let version = |key: &str| {
        versions
            .lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let cache = std::env::var_os("KOSMOS_E2E_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/kosmos-plugin-e2e")
        });
    [
        ("kubernetes", "KUBERNETES_VERSION"),
        ("helm", "HELM_VERSION"),
        ("kustomize", "KUSTOMIZE_VERSION"),
    ]
    .iter()
    .map(|(name, key)| cache.join(format!("{name}-{}", version(key))))
    .collect()
}

/// The cached kubectl, or the one on `PATH`.
pub fn kubectl_binary() -> PathBuf {
    cached_tool_dirs()
        .into_iter()
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("kubectl"))
}

/// Runs kubectl against `cluster` with `args`; fails with its stderr.
pub async fn kubectl(cluster: Cluster, args: &[&str]) -> Result<String> {
    let kubeconfig = crate::kubeconfig_path(cluster).await?;
    let output = tokio::process::Command::new(kubectl_binary())
        .args(args)
        .env("KUBECONFIG", &kubeconfig)
        .kill_on_drop(true)
        .output()
        .await
        .context("running kubectl")?;
    if !output.status.success() {
        bail!(
            "kubectl {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Waits until pod `namespace/name` is Running with every container ready.
pub async fn wait_for_pod_ready(
    client: &Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    wait_for(
        &format!("pod {namespace}/{name} to be ready"),
        timeout,
        || async {
            let pod = pods.get_opt(name).await?;
            Ok(pod.filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            }))
        },
    )
    .await
}

/// Creates claim `namespace/claim` on [`STORAGE_CLASS`] and copies `files` (local path, path in
/// the claim) into it with `kubectl cp`, through a busybox pod that mounts it, as the design's
/// walk-through does; the pod is deleted afterwards, the claim stays.
pub async fn fill_claim(
    client: &Client,
    namespace: &str,
    claim: &str,
    files: &[(&Path, &str)],
) -> Result<()> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": claim},
        "spec": {
            "storageClassName": STORAGE_CLASS,
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "16Mi"}},
        },
    }))?;
    claims
        .create(&PostParams::default(), &pvc)
        .await
        .with_context(|| format!("creating claim {namespace}/{claim}"))?;
    let name = format!("fill-{claim}");
    let name = &name[..name.len().min(63)];
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "fill",
                "image": busybox_image(),
                "imagePullPolicy": "IfNotPresent",
                "command": ["sleep", "3600"],
                "volumeMounts": [{"name": "claim", "mountPath": "/pv"}],
            }],
            "volumes": [{"name": "claim", "persistentVolumeClaim": {"claimName": claim}}],
        },
    }))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    pods.create(&PostParams::default(), &pod)
        .await
        .with_context(|| format!("creating pod {namespace}/{name}"))?;
    wait_for_pod_ready(client, namespace, name, Duration::from_secs(120)).await?;
    for (local, inside) in files {
        let target = format!("{namespace}/{name}:/pv/{}", inside.trim_start_matches('/'));
        let local = local.to_str().context("a local path that is not UTF-8")?;
        kubectl(Cluster::Host, &["cp", local, &target])
            .await
            .with_context(|| format!("copying {local} into claim {namespace}/{claim}"))?;
    }
    pods.delete(name, &DeleteParams::default().grace_period(0))
        .await
        .with_context(|| format!("deleting pod {namespace}/{name}"))?;
    Ok(())
}
