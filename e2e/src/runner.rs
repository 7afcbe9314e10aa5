//! Runs executor pods as local processes: the one part of a kubelet this project needs while the
//! local cluster has no container runtime (and this machine no registry to pull images from).
//!
//! For each pending pod labelled as an executor, the runner lays out the pod's volumes as local
//! folders (Secrets and ConfigMaps written out, emptyDirs made, a claim's files taken from
//! `<claims dir>/<namespace>/<claim>`, hostPaths used as they are), rewrites every environment
//! value that points into a mount so it points at the local folder instead, runs the containers'
//! commands one after another with the cached kubectl/helm/kustomize first on `PATH`, and writes
//! the pod's final status with the exit code and termination message as a kubelet would. The
//! image is ignored: the commands run on this machine. Everything else (the Job, the mutation,
//! the job controller, the install into the virtual cluster) is the real thing.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Volume};
use kosmos_api::contract::EXECUTOR_SELECTOR;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::kubelet::{PodOutcome, finish_pod};

/// Where the runner keeps pod folders and finds claim contents.
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// Scratch space: one folder per pod (volumes, logs, termination messages).
    pub work_dir: PathBuf,
    /// `<claims_dir>/<namespace>/<claim>` holds the files of PersistentVolumeClaim `claim`.
    pub claims_dir: PathBuf,
    /// Folders put first on the executors' `PATH` (kubectl, helm, kustomize).
    pub tool_dirs: Vec<PathBuf>,
    /// Only pods in this namespace, or every namespace when `None`.
    pub namespace: Option<String>,
    /// Bound on one container's run when the pod sets no `activeDeadlineSeconds`.
    pub max_run: Duration,
}

/// The folders where `e2e/build.sh` caches kubectl, helm and kustomize, at the versions pinned in
/// `e2e/versions.env` (the same cache and override as the scripts).
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

/// Runs executor pods until the future is dropped.
pub async fn run(client: Client, config: RunnerConfig) -> Result<()> {
    let started: Arc<Mutex<HashSet<String>>> = Arc::default();
    let pods: Api<Pod> = match &config.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let config = Arc::new(config);
    loop {
        let list = pods
            .list(&ListParams::default().labels(EXECUTOR_SELECTOR))
            .await
            .context("listing executor pods")?;
        for pod in list.items {
            let uid = pod.uid().unwrap_or_default();
            let pending = matches!(
                pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                None | Some("Pending")
            );
            if !pending || pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let first_time = started
                .lock()
                .map(|mut seen| seen.insert(uid.clone()))
                .unwrap_or(false);
            if !first_time {
                continue;
            }
            let (client, config) = (client.clone(), config.clone());
            tokio::spawn(async move {
                let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
                if let Err(e) = run_pod(&client, &config, &pod).await {
                    eprintln!("executor-runner: pod {ns}/{name}: {e:#}");
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs one pod to the end and writes its final status.
pub async fn run_pod(client: &Client, config: &RunnerConfig, pod: &Pod) -> Result<PodOutcome> {
    let ns = pod.namespace().context("the pod has no namespace")?;
    let name = pod.name_any();
    let root = config
        .work_dir
        .join(pod.uid().unwrap_or_else(|| name.clone()));
    mark_running(client, &ns, &name).await?;
    let outcome = match prepare_and_run(client, config, pod, &ns, &root).await {
        Ok(outcome) => outcome,
        Err(e) => PodOutcome::Failed {
            exit_code: 128,
            message: format!("executor-runner could not run the pod: {e:#}"),
        },
    };
    eprintln!("executor-runner: pod {ns}/{name}: {outcome:?}");
    finish_pod(client, &ns, &name, &outcome).await?;
    Ok(outcome)
}

async fn mark_running(client: &Client, ns: &str, name: &str) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "startTime": now}})),
    )
    .await
    .with_context(|| format!("marking pod {ns}/{name} running"))?;
    Ok(())
}

async fn prepare_and_run(
    client: &Client,
    config: &RunnerConfig,
    pod: &Pod,
    ns: &str,
    root: &Path,
) -> Result<PodOutcome> {
    let spec = pod.spec.as_ref().context("the pod has no spec")?;
    let mut volumes = BTreeMap::new();
    for volume in spec.volumes.iter().flatten() {
        let local = lay_out_volume(client, config, ns, root, volume).await?;
        volumes.insert(volume.name.clone(), local);
    }
    let deadline = spec
        .active_deadline_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(config.max_run, Duration::from_secs);
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers);
    let mut message = String::new();
    for container in containers {
        let (code, text) = run_container(config, root, container, &volumes, deadline).await?;
        message = text;
        if code != 0 {
            return Ok(PodOutcome::Failed {
                exit_code: code,
                message,
            });
        }
    }
    Ok(PodOutcome::Succeeded { message })
}

async fn lay_out_volume(
    client: &Client,
    config: &RunnerConfig,
    ns: &str,
    root: &Path,
    volume: &Volume,
) -> Result<PathBuf> {
    let local = root.join("volumes").join(&volume.name);
    if let Some(source) = &volume.secret {
        let secret_name = source
            .secret_name
            .as_deref()
            .context("secret volume without a name")?;
        let secret = Api::<Secret>::namespaced(client.clone(), ns)
            .get(secret_name)
            .await
            .with_context(|| format!("reading secret {ns}/{secret_name}"))?;
        let data: BTreeMap<String, Vec<u8>> = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        let items = source
            .items
            .iter()
            .flatten()
            .map(|i| (i.key.clone(), i.path.clone()));
        write_items(&local, &data, items.collect())?;
    } else if let Some(source) = &volume.config_map {
        let cm_name = &source.name;
        let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
            .get(cm_name)
            .await
            .with_context(|| format!("reading configmap {ns}/{cm_name}"))?;
        let data: BTreeMap<String, Vec<u8>> = cm
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        let items = source
            .items
            .iter()
            .flatten()
            .map(|i| (i.key.clone(), i.path.clone()));
        write_items(&local, &data, items.collect())?;
    } else if volume.empty_dir.is_some() {
        std::fs::create_dir_all(&local)?;
    } else if let Some(source) = &volume.persistent_volume_claim {
        let claim = config.claims_dir.join(ns).join(&source.claim_name);
        if !claim.is_dir() {
            bail!(
                "claim {ns}/{} has no local folder {} (put the claim's files there)",
                source.claim_name,
                claim.display()
            );
        }
        return Ok(claim);
    } else if let Some(source) = &volume.host_path {
        return Ok(PathBuf::from(&source.path));
    } else {
        bail!(
            "volume {} is of a kind the local runner does not support",
            volume.name
        );
    }
    Ok(local)
}

/// Writes `data` into `dir`: every key as a file, or only `items` (key → relative path).
fn write_items(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Vec<(String, String)>,
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let items = if items.is_empty() {
        data.keys().map(|k| (k.clone(), k.clone())).collect()
    } else {
        items
    };
    for (key, rel) in items {
        if rel.split('/').any(|p| p == ".." || p.is_empty()) {
            bail!("volume item path {rel} is not a plain relative path");
        }
        let bytes = data.get(&key).with_context(|| format!("no key {key}"))?;
        let path = dir.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, bytes)?;
    }
    Ok(())
}

/// The container's mounts as (path in the container, local path), longest first so the most
/// specific mount wins.
fn mount_table(
    container: &Container,
    volumes: &BTreeMap<String, PathBuf>,
) -> Result<Vec<(String, PathBuf)>> {
    let mut table = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let base = volumes
            .get(&mount.name)
            .with_context(|| format!("mount of unknown volume {}", mount.name))?;
        let local = match mount.sub_path.as_deref() {
            Some(sub) if !sub.is_empty() => base.join(sub),
            _ => base.clone(),
        };
        table.push((mount.mount_path.trim_end_matches('/').to_string(), local));
    }
    table.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    Ok(table)
}

/// `value` with a leading container path replaced by its local folder.
pub fn remap(value: &str, mounts: &[(String, PathBuf)]) -> String {
    for (path, local) in mounts {
        if value == path {
            return local.display().to_string();
        }
        if let Some(rest) = value.strip_prefix(path.as_str())
            && rest.starts_with('/')
        {
            return format!("{}{rest}", local.display());
        }
    }
    value.to_string()
}

async fn run_container(
    config: &RunnerConfig,
    root: &Path,
    container: &Container,
    volumes: &BTreeMap<String, PathBuf>,
    deadline: Duration,
) -> Result<(i32, String)> {
    let mounts = mount_table(container, volumes)?;
    let mut argv: Vec<String> = container.command.clone().unwrap_or_default();
    argv.extend(container.args.clone().unwrap_or_default());
    let Some((program, args)) = argv.split_first() else {
        bail!(
            "container {} has no command (the local runner cannot read images)",
            container.name
        );
    };
    let termination_log = root.join(format!("{}.termination-log", container.name));
    let log_path = root.join(format!("{}.log", container.name));
    std::fs::create_dir_all(root)?;
    std::fs::write(&termination_log, b"")?;
    let termination_path = container
        .termination_message_path
        .clone()
        .unwrap_or_else(|| "/dev/termination-log".into());

    let mut command = tokio::process::Command::new(program);
    command.args(args).env_clear();
    let mut path: OsString = std::env::join_paths(&config.tool_dirs)?;
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    command.env("PATH", path);
    command.env("HOME", root.join("home"));
    for var in container.env.iter().flatten() {
        let value = var.value.clone().unwrap_or_default();
        let value = if value == termination_path {
            termination_log.display().to_string()
        } else {
            remap(&value, &mounts)
        };
        command.env(&var.name, value);
    }
    command.env("TERMINATION_LOG", &termination_log);
    if let Some(dir) = container.working_dir.as_deref() {
        command.current_dir(remap(dir, &mounts));
    }
    let log = std::fs::File::create(&log_path)?;
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let code = match tokio::time::timeout(deadline, child.wait()).await {
        Ok(status) => status?.code().unwrap_or(137),
        Err(_) => {
            child.kill().await.ok();
            return Ok((
                137,
                format!("killed after the pod's deadline of {deadline:?}"),
            ));
        }
    };
    let mut message = std::fs::read_to_string(&termination_log).unwrap_or_default();
    if message.trim().is_empty() {
        // Like terminationMessagePolicy FallbackToLogsOnError: the log's tail says why.
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        message = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
    }
    message.truncate(4096);
    Ok((code, message.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remap_takes_the_most_specific_mount_and_only_whole_components() {
        let mounts = vec![
            ("/kosmos/work".to_string(), PathBuf::from("/tmp/w")),
            ("/pv".to_string(), PathBuf::from("/tmp/claim")),
        ];
        assert_eq!(remap("/pv", &mounts), "/tmp/claim");
        assert_eq!(
            remap("/pv/sub/test.yaml", &mounts),
            "/tmp/claim/sub/test.yaml"
        );
        assert_eq!(remap("/pvx", &mounts), "/pvx");
        assert_eq!(remap("/kosmos/work/home", &mounts), "/tmp/w/home");
        assert_eq!(remap("install", &mounts), "install");
    }

    #[test]
    fn items_must_stay_inside_the_volume() {
        let dir = std::env::temp_dir().join(format!("runner-test-{}", std::process::id()));
        let data = BTreeMap::from([("k".to_string(), b"v".to_vec())]);
        let escaped = write_items(&dir, &data, vec![("k".into(), "../x".into())]);
        assert!(escaped.is_err());
        write_items(&dir, &data, vec![]).unwrap();
        assert_eq!(std::fs::read(dir.join("k")).unwrap(), b"v");
        std::fs::remove_dir_all(&dir).ok();
    }
}
