//! Two checkouts on one machine run their local clusters at once without touching each other,
//! and `cluster.sh down` of one takes away everything it made and nothing of the other.
//!
//! The first cluster is the one every test uses (this checkout's `e2e/.state`). The second
//! checkout is a copy of the e2e scripts in a temp folder, as a second clone would have them: it
//! gets its own state folder, so its own port block and veth subnet, network namespace, cgroup
//! root, containerd and kubelet. The test starts it, runs a pod in each cluster at the same time,
//! checks that each runtime, cgroup tree and network namespace holds only its own, stops the
//! second one and checks that no process, mount, network namespace, network device, cgroup or
//! state of it is left, while the first still runs its pod and starts new ones.
//!
//! It costs one more cluster start and stop (about 1.5 min, 1.1 GB of memory while it runs).

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kosmos_e2e::{Cluster, TestNamespace, wait_for};
use kube::api::{ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;

/// Bound on `cluster.sh up` of the second cluster: the binaries and images are cached, but on a
/// loaded 2-core machine each apiserver may take a minute to become ready.
const UP_TIMEOUT: Duration = Duration::from_secs(900);
/// Bound on `cluster.sh down` (it gives each component 15 s to stop).
const DOWN_TIMEOUT: Duration = Duration::from_secs(400);
/// Bound on a pod becoming ready or finishing on a loaded node.
const POD_TIMEOUT: Duration = Duration::from_secs(180);

/// What a cluster is, as its checkout's `cluster.sh env` and state folder say.
#[derive(Debug, Clone)]
struct Facts {
    state: PathBuf,
    kubeconfig: PathBuf,
    netns: String,
    /// The hash of the state folder that names the namespace, the veth and the cgroup root.
    id: String,
    port_base: String,
    node_ip: String,
}

impl Facts {
    fn veth(&self) -> String {
        format!("kosmos-{}", self.id)
    }

    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|hierarchy| hierarchy.path().join(format!("kosmos-e2e-{}", self.id)))
            .filter(|dir| dir.exists())
            .collect()
    }

    fn containerd_socket(&self) -> PathBuf {
        self.state.join("node/containerd.sock")
    }

    async fn client(&self) -> Result<Client> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)?;
        let config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }
}

/// Runs `script args...` with the environment of a second clone: nothing that would point it at
/// the first checkout's state or ports. Fails with its output unless it exits 0.
async fn run_script(script: &Path, args: &[&str], timeout: Duration) -> Result<String> {
    let child = tokio::process::Command::new(script)
        .args(args)
        .env_remove("KOSMOS_E2E_STATE")
        .env_remove("KOSMOS_E2E_PORT_BASE")
        // Each component gets up to 5 minutes to become ready: a kubelet on a 2-core machine
        // busy with the other tests' pods was once not Ready within the default 2.
        .env("KOSMOS_E2E_START_TIMEOUT", "300")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let what = format!("{} {}", script.display(), args.join(" "));
    let output = tokio::time::timeout(timeout, child)
        .await
        .with_context(|| format!("{what} did not finish within {timeout:?}"))?
        .with_context(|| format!("running {what}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(
        output.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(stdout)
}

/// The facts of the cluster of `script`'s checkout, from `cluster.sh env`.
async fn facts(script: &Path) -> Result<Facts> {
    let env = run_script(script, &["env"], Duration::from_secs(60)).await?;
    let var = |name: &str| -> Result<String> {
        env.lines()
            .find_map(|line| line.strip_prefix(&format!("export {name}=")))
            .map(|value| value.trim_matches('\'').to_owned())
            .with_context(|| format!("`{} env` printed no {name}", script.display()))
    };
    let kubeconfig = PathBuf::from(var("KUBECONFIG")?);
    let state = kubeconfig
        .parent()
        .context("the host kubeconfig lies in the state folder")?
        .to_path_buf();
    let netns = var("KOSMOS_E2E_NETNS")?;
    let id = netns
        .strip_prefix("kosmos-e2e-")
        .context("the network namespace is kosmos-e2e-<id>")?
        .to_owned();
    let machine_side = var("KOSMOS_E2E_WEBHOOK_HOST")?;
    let node_ip = machine_side
        .strip_suffix(".1")
        .map(|subnet| format!("{subnet}.2"))
        .context("the machine's end of the veth is <subnet>.1")?;
    let port_base = std::fs::read_to_string(state.join("port-base"))
        .with_context(|| format!("reading {}/port-base", state.display()))?
        .trim()
        .to_owned();
    Ok(Facts {
        state,
        kubeconfig,
        netns,
        id,
        port_base,
        node_ip,
    })
}

/// A copy of this checkout's e2e scripts (and the workspace version they read) in a temp folder,
/// whose cluster is stopped on drop if the test ends before it does.
struct SecondCheckout {
    dir: tempfile::TempDir,
    stopped: bool,
}

impl SecondCheckout {
    fn new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("kosmos-e2e-second-checkout-")
            .tempdir()?;
        let from = kosmos_e2e::e2e_dir();
        let to = dir.path().join("e2e");
        copy_dir(&from, &to, &|name| {
            name.ends_with(".sh")
                || name == "versions.env"
                || name == "manifests"
                || name == "images"
                || name == "pause"
                || name.ends_with(".yaml")
                || name.ends_with(".go")
                || name == "go.mod"
                // cert-manager's mains: cluster.sh keys their cached build by these sources.
                || name == "go.sum"
                || name == "cert-manager"
                || name == "controller"
                || name == "cainjector"
        })?;
        std::fs::copy(
            kosmos_e2e::repo_dir().join("Cargo.toml"),
            dir.path().join("Cargo.toml"),
        )?;
        Ok(Self {
            dir,
            stopped: false,
        })
    }

    fn script(&self) -> PathBuf {
        self.dir.path().join("e2e/cluster.sh")
    }
}

impl Drop for SecondCheckout {
    fn drop(&mut self) {
        if !self.stopped {
            // Blocking on purpose: the temp folder (its state) goes right after this.
            let _ = std::process::Command::new(self.script())
                .arg("down")
                .env_remove("KOSMOS_E2E_STATE")
                .stdin(Stdio::null())
                .status();
        }
    }
}

/// Copies the files and folders of `from` whose names `keep` accepts (folders recursively).
fn copy_dir(from: &Path, to: &Path, keep: &dyn Fn(&str) -> bool) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !keep(&name) {
            continue;
        }
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_dir(&entry.path(), &to.join(&name), keep)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), to.join(&name))?;
        }
    }
    Ok(())
}

/// A busybox pod `name` in `namespace` that runs `script`.
fn busybox_pod(name: &str, script: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "main",
                "image": kosmos_e2e::busybox_image(),
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", script],
            }],
        },
    }))
    .unwrap()
}

/// The container ID (without the runtime prefix) of the pod's first container.
fn container_id(pod: &Pod) -> Result<String> {
    let id = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.container_id.as_deref())
        .context("the pod's container has no ID yet")?;
    Ok(id.trim_start_matches("containerd://").to_owned())
}

/// Task ID -> pid of every running container of the node whose containerd listens at `socket`.
fn tasks(socket: &Path) -> Result<Vec<(String, u32)>> {
    let output = std::process::Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["-n", "k8s.io", "tasks", "list"])
        .output()
        .context("running ctr")?;
    ensure!(
        output.status.success(),
        "ctr tasks list at {} failed: {}",
        socket.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let id = fields.next()?.to_owned();
            let pid = fields.next()?.parse().ok()?;
            Some((id, pid))
        })
        .collect())
}

/// The node's InternalIP as its apiserver reports it.
async fn node_ip(client: &Client) -> Result<String> {
    let node = Api::<Node>::all(client.clone())
        .get("kosmos-e2e-node")
        .await?;
    node.status
        .and_then(|s| s.addresses)
        .into_iter()
        .flatten()
        .find(|a| a.type_ == "InternalIP")
        .map(|a| a.address)
        .context("node kosmos-e2e-node has no InternalIP")
}

/// The start time of process `pid` (field 22 of /proc/<pid>/stat), which tells it apart from a
/// later process that reuses the pid.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command (field 2) is in parentheses and may hold spaces: count after its end.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19).map(str::to_owned)
}

/// Every live process as (pid, start time).
fn processes() -> Vec<(u32, String)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, start_time(pid)?)))
        .collect()
}

/// What of a cluster lives on this machine: its processes (by command line, mount namespace or
/// cgroup), the mounts that name its state folder (in any process's view), its network
/// namespace, veth and cgroup folders.
#[derive(Debug, Default)]
struct Footprint {
    processes: BTreeSet<(u32, String)>,
    mounts: BTreeSet<String>,
    netns: bool,
    veth: bool,
    cgroups: Vec<PathBuf>,
    state_entries: BTreeSet<String>,
}

fn footprint(facts: &Facts) -> Footprint {
    let state = facts.state.display().to_string();
    let cgroup = format!("/kosmos-e2e-{}/", facts.id);
    let holder_ns = std::fs::read_to_string(facts.state.join("pids/node.pid"))
        .ok()
        .and_then(|pid| std::fs::read_link(format!("/proc/{}/ns/mnt", pid.trim())).ok());
    let mut found = Footprint::default();
    for (pid, started) in processes() {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let mount_ns = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
        if cmdline.contains(&state)
            || cgroups.contains(&cgroup)
            || (holder_ns.is_some() && mount_ns == holder_ns)
        {
            found.processes.insert((pid, started));
        }
        let mountinfo =
            std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
        for line in mountinfo.lines().filter(|l| l.contains(&state)) {
            // The mount point (field 5), without the mount namespace's other details.
            let point = line.split_whitespace().nth(4).unwrap_or(line);
            found.mounts.insert(point.to_owned());
        }
    }
    found.netns = Path::new("/run/netns").join(&facts.netns).exists();
    found.veth = Path::new("/sys/class/net").join(facts.veth()).exists();
    found.cgroups = facts.cgroup_dirs();
    found.state_entries = std::fs::read_dir(&facts.state)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    found
}

/// Each component of a cluster (its pid file) as (name, pid, start time).
fn components(facts: &Facts) -> Result<Vec<(String, u32, String)>> {
    let mut found = Vec::new();
    for file in std::fs::read_dir(facts.state.join("pids"))? {
        let path = file?.path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let pid: u32 = std::fs::read_to_string(&path)?.trim().parse()?;
        let started =
            start_time(pid).with_context(|| format!("{name} (pid {pid}) is not running"))?;
        found.push((name, pid, started));
    }
    ensure!(found.len() >= 10, "only {found:?} run in {}", facts.netns);
    Ok(found)
}

/// Whether any of `processes` is still alive (the same pid with the same start time).
fn still_alive(processes: &BTreeSet<(u32, String)>) -> Vec<u32> {
    processes
        .iter()
        .filter(|(pid, started)| start_time(*pid).as_ref() == Some(started))
        .map(|(pid, _)| *pid)
        .collect()
}

#[tokio::test]
async fn two_checkouts_run_clusters_at_once_and_one_goes_down_alone() -> Result<()> {
    if kosmos_e2e::uses_own_cluster() {
        bail!(
            "this test starts a second local cluster next to e2e/cluster.sh's own; it cannot run \
             against KUBECONFIG's cluster (skip it with --skip two_checkouts)"
        );
    }
    // The first cluster: this checkout's, started by with-cluster.sh or by the first test.
    let first_client = kosmos_e2e::host().await?;
    let first = facts(&kosmos_e2e::e2e_dir().join("cluster.sh")).await?;

    let mut second_checkout = SecondCheckout::new()?;
    let script = second_checkout.script();
    if let Err(error) = run_script(&script, &["up"], UP_TIMEOUT).await {
        // Down (on drop) removes the state and its logs: keep what tells why first.
        let logs = second_checkout.dir.path().join("e2e/.state/logs");
        let mut tails = String::new();
        for name in ["containerd", "kubelet"] {
            let text =
                std::fs::read_to_string(logs.join(format!("{name}.log"))).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            tails += &format!(
                "\n--- the end of the second cluster's {name}.log:\n{}",
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
        return Err(error.context(tails));
    }
    let second = facts(&script).await?;
    let second_client = second.client().await?;

    // Apart by construction: state, port block, subnet, namespace, veth, cgroup root.
    ensure!(
        second.state.starts_with(second_checkout.dir.path()),
        "{second:?}"
    );
    ensure!(first.port_base != second.port_base, "{first:?} {second:?}");
    ensure!(first.node_ip != second.node_ip, "{first:?} {second:?}");
    ensure!(first.id != second.id, "{first:?} {second:?}");
    // Each veth subnet is on its own veth only (two devices with one subnet: the machine routes
    // to the first, and the second cluster is unreachable or, worse, the first one answers).
    let addresses = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()?;
    let addresses = String::from_utf8_lossy(&addresses.stdout);
    for facts in [&first, &second] {
        let subnet = format!(" {}.", facts.node_ip.rsplit_once('.').unwrap().0);
        let devices: Vec<&str> = addresses
            .lines()
            .filter(|l| l.contains(&subnet))
            .filter_map(|l| l.split_whitespace().nth(1))
            .collect();
        ensure!(
            devices == [facts.veth()],
            "the subnet of {} is on {devices:?}",
            facts.netns
        );
    }
    // Each apiserver answers at its own node IP and knows its own node there.
    ensure!(node_ip(&first_client).await? == first.node_ip);
    ensure!(node_ip(&second_client).await? == second.node_ip);

    // One pod in each cluster at the same time, same namespace and pod name in both.
    let ns = TestNamespace::create(Cluster::Host, "two-checkouts").await?;
    Api::<Namespace>::all(second_client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.name().to_owned()),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            },
        )
        .await?;
    let long_sleep = busybox_pod("sleeper", "sleep 3600");
    let first_pods: Api<Pod> = Api::namespaced(first_client.clone(), ns.name());
    let second_pods: Api<Pod> = Api::namespaced(second_client.clone(), ns.name());
    wait_for(
        "the second cluster's default ServiceAccount",
        POD_TIMEOUT,
        || async {
            Ok(
                Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(
                    second_client.clone(),
                    ns.name(),
                )
                .get_opt("default")
                .await?,
            )
        },
    )
    .await?;
    first_pods
        .create(&PostParams::default(), &long_sleep)
        .await?;
    second_pods
        .create(&PostParams::default(), &long_sleep)
        .await?;
    let first_pod =
        kosmos_e2e::wait_for_pod_ready(&first_client, ns.name(), "sleeper", POD_TIMEOUT).await?;
    let second_pod =
        kosmos_e2e::wait_for_pod_ready(&second_client, ns.name(), "sleeper", POD_TIMEOUT).await?;
    let first_container = container_id(&first_pod)?;
    let second_container = container_id(&second_pod)?;

    // Each containerd runs only its own pod's container; each container sits in its own
    // cluster's cgroup tree and its node's network namespace.
    let first_tasks = tasks(&first.containerd_socket())?;
    let second_tasks = tasks(&second.containerd_socket())?;
    let has = |tasks: &[(String, u32)], id: &str| tasks.iter().any(|(t, _)| t == id);
    ensure!(
        has(&first_tasks, &first_container) && !has(&first_tasks, &second_container),
        "first containerd's tasks {first_tasks:?}"
    );
    ensure!(
        has(&second_tasks, &second_container) && !has(&second_tasks, &first_container),
        "second containerd's tasks {second_tasks:?}"
    );
    for (facts, tasks, container) in [
        (&first, &first_tasks, &first_container),
        (&second, &second_tasks, &second_container),
    ] {
        let pid = tasks.iter().find(|(t, _)| t == container).unwrap().1;
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        ensure!(
            cgroups.contains(&format!("/kosmos-e2e-{}/", facts.id)),
            "container {container} (pid {pid}) of {} is not in its cgroup root:\n{cgroups}",
            facts.netns
        );
        let containerd = std::fs::read_to_string(facts.state.join("pids/containerd.pid"))?;
        let runtime_net = std::fs::read_link(format!("/proc/{}/ns/net", containerd.trim()))?;
        let cluster_net = std::fs::metadata(Path::new("/run/netns").join(&facts.netns))?;
        ensure!(
            runtime_net.display().to_string()
                == format!(
                    "net:[{}]",
                    std::os::unix::fs::MetadataExt::ino(&cluster_net)
                ),
            "containerd of {} runs in {runtime_net:?}, not in its network namespace",
            facts.netns
        );
    }

    // What the second cluster has on this machine, before it goes.
    let before = footprint(&second);
    ensure!(
        !before.processes.is_empty()
            && !before.mounts.is_empty()
            && before.netns
            && before.veth
            && !before.cgroups.is_empty(),
        "the second cluster's footprint was not found while it runs: {before:?}"
    );
    let first_components = components(&first)?;

    run_script(&script, &["down"], DOWN_TIMEOUT).await?;
    second_checkout.stopped = true;

    let after = footprint(&second);
    let alive = still_alive(&before.processes);
    ensure!(
        alive.is_empty() && after.processes.is_empty(),
        "processes of the second cluster left: {alive:?} {:?}",
        after.processes
    );
    ensure!(
        after.mounts.is_empty(),
        "mounts of the second cluster left: {:?}",
        after.mounts
    );
    ensure!(
        !after.netns && !after.veth,
        "network namespace {} or veth {} left",
        second.netns,
        second.veth()
    );
    ensure!(
        after.cgroups.is_empty(),
        "cgroups left: {:?}",
        after.cgroups
    );
    ensure!(
        after.state_entries.iter().all(|e| e == "lock"),
        "state left in {}: {:?}",
        second.state.display(),
        after.state_entries
    );

    // The first cluster lost nothing: its components (the same processes), namespace and veth,
    // the running pod (same container), and it still runs new pods.
    let stopped: Vec<_> = first_components
        .iter()
        .filter(|(_, pid, started)| start_time(*pid).as_ref() != Some(started))
        .map(|(name, pid, _)| format!("{name} (pid {pid})"))
        .collect();
    ensure!(
        stopped.is_empty(),
        "components of the first cluster stopped: {stopped:?}"
    );
    let first_after = footprint(&first);
    ensure!(first_after.netns && first_after.veth, "{first_after:?}");
    let status = run_script(
        &kosmos_e2e::e2e_dir().join("cluster.sh"),
        &["status"],
        Duration::from_secs(60),
    )
    .await
    .context("the first cluster's status after the second went down")?;
    ensure!(status.contains("running"), "{status}");
    let sleeper = first_pods.get("sleeper").await?;
    ensure!(container_id(&sleeper)? == first_container, "{sleeper:?}");
    ensure!(
        has(&tasks(&first.containerd_socket())?, &first_container),
        "the first cluster's container is gone"
    );
    first_pods
        .create(
            &PostParams::default(),
            &busybox_pod("after", "echo still here"),
        )
        .await?;
    wait_for("pod `after` to succeed", POD_TIMEOUT, || async {
        let pod = first_pods.get("after").await?;
        let phase = pod.status.and_then(|s| s.phase).unwrap_or_default();
        if phase == "Failed" {
            bail!("pod `after` failed in the first cluster");
        }
        Ok((phase == "Succeeded").then_some(()))
    })
    .await?;
    ns.delete().await
}
