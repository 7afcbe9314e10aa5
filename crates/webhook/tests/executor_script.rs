//! The executor script, run for real: the environment the mutation produced (paths of the pod
//! remapped into a temp folder), the pinned kubectl and helm of `e2e/build.sh`, and the *virtual*
//! control plane of `e2e/cluster.sh` as the cluster plugins install into. Each test checks that
//! the objects landed there (or that the failure says why).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use kosmos_api::contract::Action;
use kosmos_api::{KeyRef, OptionValueSource, PluginOption, VirtualCluster};
use kosmos_e2e::{Cluster, TestNamespace};
use kosmos_webhook::mutation::EXECUTOR_SCRIPT;
use kosmos_webhook::{executor_env, mutate_job};
use kube::Api;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const VC: &str = "tenant1-cluster";

/// What one run of the script left behind.
#[derive(Debug)]
struct Outcome {
    code: Option<i32>,
    message: String,
    /// What the script said along the way (retries), shown when an assertion fails.
    stderr: String,
}

/// The world of one test: a namespace in the virtual cluster and a temp folder standing in for
/// the pod's file system.
struct World {
    ns: TestNamespace,
    tmp: tempfile::TempDir,
    /// claim name -> folder playing the claim's contents
    claims: BTreeMap<String, PathBuf>,
    /// Secrets and ConfigMaps of the host namespace (name -> key -> value), for option volumes.
    sources: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

impl World {
    async fn new(prefix: &str) -> Self {
        Self {
            ns: TestNamespace::create(Cluster::Virtual, prefix)
                .await
                .unwrap(),
            tmp: tempfile::tempdir().unwrap(),
            claims: BTreeMap::new(),
            sources: BTreeMap::new(),
        }
    }

    fn ns(&self) -> &str {
        self.ns.name()
    }

    /// Writes `text` to `rel` below the temp folder and returns the absolute path.
    fn file(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.tmp.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Makes `claim` a folder below the temp folder.
    fn claim(&mut self, claim: &str) -> PathBuf {
        let dir = self.tmp.path().join("claims").join(claim);
        std::fs::create_dir_all(&dir).unwrap();
        self.claims.insert(claim.to_owned(), dir.clone());
        dir
    }

    async fn configmap(&self, name: &str) -> Option<ConfigMap> {
        let client = kosmos_e2e::virtual_cluster().await.unwrap();
        Api::<ConfigMap>::namespaced(client, self.ns())
            .get_opt(name)
            .await
            .unwrap()
    }

    /// Mutates a bare Job for the plugin (YAML text), then runs its container's command locally.
    async fn run(&self, plugin_yaml: &str, action: Action) -> Outcome {
        self.run_for(plugin_yaml, &common::virtual_cluster("tenants", VC), action)
            .await
    }

    /// Like [`Self::run`], for the given VirtualCluster (its options).
    async fn run_for(&self, plugin_yaml: &str, vc: &VirtualCluster, action: Action) -> Outcome {
        let plugin = common::plugin_from_yaml("tenants", plugin_yaml);
        let job = common::bare_job_for(vc, &plugin, action);
        let mutation = mutate_job(&job, &plugin, vc, &common::any_host_path()).unwrap();
        let job = mutation.apply(&job).unwrap();
        self.execute(&job).await
    }

    /// Runs the executor script itself with `env` (and the virtual cluster's kubeconfig, a work
    /// folder and the termination log), as the mutated pod would.
    async fn run_script(&self, env: &[(String, String)]) -> Outcome {
        let run_dir = tempfile::tempdir_in(self.tmp.path()).unwrap();
        let termination_log = run_dir.path().join("termination-log");
        let mut path: Vec<PathBuf> = common::tool_dirs();
        path.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        let kubeconfig = kosmos_e2e::kubeconfig_path(Cluster::Virtual).await.unwrap();
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(kosmos_webhook::mutation::EXECUTOR_SCRIPT)
            .env_clear()
            .env("PATH", std::env::join_paths(path).unwrap())
            .env(executor_env::HOME, run_dir.path())
            .env(executor_env::TERMINATION_LOG, &termination_log)
            .env(executor_env::KUBECONFIG, kubeconfig)
            .env(executor_env::PLUGIN_WORK_DIR, run_dir.path().join("work"))
            .env(executor_env::PLUGIN_TIMEOUT_SECONDS, "30")
            .current_dir(run_dir.path())
            .kill_on_drop(true);
        for (name, value) in env {
            cmd.env(name, value);
        }
        let output = tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .expect("the executor script finished within 60 s")
            .unwrap();
        Outcome {
            code: output.status.code(),
            message: std::fs::read_to_string(&termination_log).unwrap_or_default(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    async fn execute(&self, job: &Job) -> Outcome {
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let container = &pod.containers[0];
        let run_dir = tempfile::tempdir_in(self.tmp.path()).unwrap();
        // mount path in the pod -> folder (or file) on this machine
        let mut mounts: Vec<(String, PathBuf)> = Vec::new();
        for mount in container.volume_mounts.as_ref().unwrap() {
            let volume = pod
                .volumes
                .as_ref()
                .unwrap()
                .iter()
                .find(|v| v.name == mount.name)
                .unwrap();
            let option_source = volume
                .secret
                .as_ref()
                .filter(|s| s.optional == Some(true))
                .map(|s| (s.secret_name.clone().unwrap_or_default(), s.items.clone()))
                .or_else(|| {
                    volume
                        .config_map
                        .as_ref()
                        .map(|c| (c.name.clone(), c.items.clone()))
                });
            let local = if let Some((name, items)) = option_source {
                // An option volume: only its items, and nothing when the source or key is
                // missing (the volume is optional), as the kubelet does.
                let dir = run_dir.path().join(&volume.name);
                std::fs::create_dir_all(&dir).unwrap();
                for item in items.into_iter().flatten() {
                    if let Some(value) = self.sources.get(&name).and_then(|d| d.get(&item.key)) {
                        std::fs::write(dir.join(&item.path), value).unwrap();
                    }
                }
                dir
            } else if volume.secret.is_some() {
                let dir = run_dir.path().join("kubeconfig");
                std::fs::create_dir_all(&dir).unwrap();
                let kubeconfig = kosmos_e2e::kubeconfig_path(Cluster::Virtual).await.unwrap();
                std::os::unix::fs::symlink(kubeconfig, dir.join("kubeconfig")).unwrap();
                dir
            } else if volume.empty_dir.is_some() {
                run_dir.path().join("work")
            } else if let Some(claim) = &volume.persistent_volume_claim {
                self.claims[&claim.claim_name].clone()
            } else if let Some(host) = &volume.host_path {
                PathBuf::from(&host.path)
            } else {
                panic!("unexpected volume {volume:?}");
            };
            mounts.push((mount.mount_path.clone(), local));
        }
        // Longest mount path first, so /kosmos/work/x is not taken for /kosmos.
        mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        let remap = |value: &str| -> String {
            for (mount, local) in &mounts {
                if value == mount {
                    return local.display().to_string();
                }
                if let Some(rest) = value.strip_prefix(&format!("{mount}/")) {
                    return local.join(rest).display().to_string();
                }
            }
            value.to_owned()
        };
        let termination_log = run_dir.path().join("termination-log");
        let mut path: Vec<PathBuf> = common::tool_dirs();
        path.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        let command = container.command.as_ref().unwrap();
        let mut cmd = tokio::process::Command::new(&command[0]);
        cmd.args(&command[1..])
            .env_clear()
            .env("PATH", std::env::join_paths(path).unwrap())
            .env(executor_env::TERMINATION_LOG, &termination_log)
            .kill_on_drop(true);
        for env in container.env.as_ref().unwrap() {
            assert!(
                executor_env::is_known(&env.name),
                "the mutation set {}, which crates/webhook/src/executor_env.rs does not declare",
                env.name
            );
            cmd.env(&env.name, remap(env.value.as_deref().unwrap_or_default()));
        }
        let output = tokio::time::timeout(Duration::from_secs(180), cmd.output())
            .await
            .expect("the executor script finished within 180 s")
            .unwrap();
        Outcome {
            code: output.status.code(),
            message: std::fs::read_to_string(&termination_log).unwrap_or_default(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// The script reads every input the list declares, so a renamed variable cannot leave one side
/// behind: a source's names are read as `${source}_<SUFFIX>` after `fetch <SOURCE>`.
#[test]
fn the_script_reads_every_declared_input() {
    let reads = |name: &str| {
        EXECUTOR_SCRIPT.contains(&format!("${{{name}"))
            || EXECUTOR_SCRIPT.contains(&format!("${name}"))
    };
    for name in executor_env::INPUTS {
        assert!(reads(name), "executor.sh never reads {name}");
    }
    for source in executor_env::SOURCES {
        assert!(
            reads(source.path),
            "executor.sh never reads {}",
            source.path
        );
        let prefix = source.path.trim_end_matches("_PATH");
        assert!(
            EXECUTOR_SCRIPT.contains(&format!("fetch {prefix}")),
            "executor.sh never fetches {prefix}"
        );
        for name in [source.uri, source.sha256, source.download, source.unpack] {
            let suffix = name.strip_prefix(prefix).unwrap();
            assert!(
                EXECUTOR_SCRIPT.contains(&format!("${{source}}{suffix}")),
                "executor.sh never reads <source>{suffix} ({name})"
            );
        }
    }
    for name in executor_env::CONTEXT {
        assert!(!reads(name), "executor.sh reads {name}; move it to INPUTS");
    }
}

fn configmap_yaml(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  value: {value:?}\n"
    )
}

fn assert_ok(outcome: &Outcome) {
    assert_eq!(outcome.code, Some(0), "{outcome:#?}");
}

#[tokio::test]
async fn yaml_file_from_a_claim_installs_and_uninstalls() {
    let mut w = World::new("exec-yaml-file").await;
    let claim = w.claim("plugin-store-ubuntu-statefulset-0");
    std::fs::create_dir_all(claim.join("app")).unwrap();
    std::fs::write(
        claim.join("app/test.yaml"),
        configmap_yaml("from-claim", "1"),
    )
    .unwrap();
    let plugin = format!(
        "metadata: {{name: file}}\nspec:\n  pluginSources:\n    yaml:\n      namespace: {}\n      path:\n        pvPath: plugin-store-ubuntu-statefulset-0:/pv/app/test.yaml\n",
        w.ns()
    );
    let outcome = w.run(&plugin, Action::Install).await;
    assert_ok(&outcome);
    assert_eq!(outcome.message.trim(), "plugin file installed");
    assert!(w.configmap("from-claim").await.is_some());

    let outcome = w.run(&plugin, Action::Uninstall).await;
    assert_ok(&outcome);
    assert!(w.configmap("from-claim").await.is_none());
    // Uninstalling what is already gone still succeeds.
    assert_ok(&w.run(&plugin, Action::Uninstall).await);
    w.ns.delete().await.unwrap();
}

#[tokio::test]
async fn seed_walk_through_applies_a_whole_claim_recursively() {
    let mut w = World::new("exec-yaml-folder").await;
    let claim = w.claim("plugin-store-ubuntu-statefulset-0");
    std::fs::write(claim.join("test.yaml"), configmap_yaml("top", "1")).unwrap();
    std::fs::create_dir_all(claim.join("nested/deeper")).unwrap();
    std::fs::write(
        claim.join("nested/deeper/more.yaml"),
        configmap_yaml("deep", "2"),
    )
    .unwrap();
    let plugin = format!(
        "metadata: {{name: apiserver-network-proxy}}\nspec:\n  pluginSources:\n    yaml:\n      namespace: {}\n      path:\n        pvPath: plugin-store-ubuntu-statefulset-0:/pv\n",
        w.ns()
    );
    assert_ok(&w.run(&plugin, Action::Install).await);
    assert!(w.configmap("top").await.is_some());
    assert!(w.configmap("deep").await.is_some());
    w.ns.delete().await.unwrap();
}

#[tokio::test]
async fn a_kustomization_folder_is_applied_with_kustomize() {
    let w = World::new("exec-kustomize").await;
    w.file("kust/cm.yaml", &configmap_yaml("base", "k"));
    let dir = w.file(
        "kust/kustomization.yaml",
        "resources:\n- cm.yaml\nnamePrefix: kustomized-\n",
    );
    let plugin = format!(
        "metadata: {{name: kust}}\nspec:\n  pluginSources:\n    yaml:\n      namespace: {}\n      path:\n        hostPath:\n          path: {}\n",
        w.ns(),
        dir.parent().unwrap().display()
    );
    assert_ok(&w.run(&plugin, Action::Install).await);
    assert!(w.configmap("kustomized-base").await.is_some());
    assert!(w.configmap("base").await.is_none());
    assert_ok(&w.run(&plugin, Action::Uninstall).await);
    assert!(w.configmap("kustomized-base").await.is_none());
    w.ns.delete().await.unwrap();
}

fn write_chart(dir: &Path) {
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(
        dir.join("Chart.yaml"),
        "apiVersion: v2\nname: demo\nversion: 0.1.0\n",
    )
    .unwrap();
    std::fs::write(dir.join("values.yaml"), "color: red\nsize: small\n").unwrap();
    std::fs::write(
        dir.join("templates/cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-settings\ndata:\n  color: {{ .Values.color | quote }}\n  size: {{ .Values.size | quote }}\n",
    )
    .unwrap();
}

#[tokio::test]
async fn a_stored_chart_installs_with_values_file_then_inline_values() {
    let mut w = World::new("exec-chart").await;
    let claim = w.claim("charts");
    write_chart(&claim.join("demo"));
    let values_file = w.file("values/override.yaml", "color: blue\nsize: large\n");
    // Inline values win over the values file, which wins over the chart's defaults.
    let plugin = format!(
        "metadata: {{name: chart}}\nspec:\n  pluginSources:\n    chart:\n      releaseName: demo-{suffix}\n      namespace: {ns}\n      storage:\n        pvPath: charts:/charts/demo\n      valuesFile:\n        hostPath:\n          path: {values}\n      values: |\n        size: huge\n",
        suffix = &w.ns()[w.ns().len() - 5..],
        ns = w.ns(),
        values = values_file.display()
    );
    let outcome = w.run(&plugin, Action::Install).await;
    assert_ok(&outcome);
    let release = format!("demo-{}", &w.ns()[w.ns().len() - 5..]);
    let cm = w
        .configmap(&format!("{release}-settings"))
        .await
        .expect("the chart's ConfigMap");
    let data = cm.data.unwrap();
    assert_eq!(data["color"], "blue");
    assert_eq!(data["size"], "huge");

    assert_ok(&w.run(&plugin, Action::Uninstall).await);
    assert!(w.configmap(&format!("{release}-settings")).await.is_none());
    w.ns.delete().await.unwrap();
}

/// Serves `body` for every request on 127.0.0.1; returns the base URL.
async fn serve(body: Vec<u8>) -> String {
    serve_paths(BTreeMap::from([(String::new(), body)])).await
}

/// Serves each body at the URL path that ends with its key (the empty key matches any path);
/// anything else is a 404. Returns the base URL.
async fn serve_paths(files: BTreeMap<String, Vec<u8>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let files = std::sync::Arc::new(files);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let files = files.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&request).into_owned();
                let path = line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .split('?')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let found = files
                    .iter()
                    .find(|(suffix, _)| path.ends_with(suffix.as_str()))
                    .map(|(_, body)| body.clone());
                let (status, body) = match found {
                    Some(body) => ("200 OK", body),
                    None => ("404 Not Found", b"not found".to_vec()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

fn sha256_hex(data: &[u8]) -> String {
    // The same tool the executor uses, so the test checks the script, not a second hasher.
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

#[tokio::test]
async fn a_uri_is_fetched_and_its_sha256_checked() {
    let w = World::new("exec-uri").await;
    let body = configmap_yaml("fetched", "over-http").into_bytes();
    let base = serve(body.clone()).await;
    let good = sha256_hex(&body);
    let plugin = |sha: &str| {
        format!(
            "metadata: {{name: fetched}}\nspec:\n  pluginSources:\n    yaml:\n      namespace: {}\n      path:\n        uri: {base}/manifests/cm.yaml?token=x\n        sha256: {sha}\n",
            w.ns()
        )
    };
    let bad = "0".repeat(64);
    let outcome = w.run(&plugin(&bad), Action::Install).await;
    assert_eq!(outcome.code, Some(3), "{outcome:#?}");
    assert!(
        outcome.message.contains("sha256") && outcome.message.contains(&bad),
        "{outcome:#?}"
    );
    assert!(w.configmap("fetched").await.is_none(), "nothing is applied");

    assert_ok(&w.run(&plugin(&good), Action::Install).await);
    assert_eq!(
        w.configmap("fetched").await.unwrap().data.unwrap()["value"],
        "over-http"
    );
    w.ns.delete().await.unwrap();
}

#[tokio::test]
async fn success_state_command_exit_status_is_the_verdict() {
    let mut w = World::new("exec-success").await;
    let claim = w.claim("store");
    std::fs::write(claim.join("cm.yaml"), configmap_yaml("checked", "1")).unwrap();
    let plugin = |command: &str, timeout: u32| {
        format!(
            "metadata: {{name: checked}}\nspec:\n  timeoutSeconds: {timeout}\n  successStateCommand: {command:?}\n  pluginSources:\n    yaml:\n      namespace: {ns}\n      path:\n        pvPath: store:/pv\n",
            ns = w.ns()
        )
    };
    // A real check against the virtual cluster, through the injected KUBECONFIG.
    let check = format!("kubectl get configmap checked -n {}", w.ns());
    assert_ok(&w.run(&plugin(&check, 60), Action::Install).await);

    // The seed's trap: echoing in both branches always exits 0, whatever the state.
    let trap = "kubectl get pods -n default -l app=test --field-selector=status.phase!=Running | grep -q 'No resources found' && echo ok || echo not-ok";
    assert_ok(&w.run(&plugin(trap, 30), Action::Install).await);

    // The limit covers the apply before the command too; 10 s leaves room for a loaded machine
    // (`make test` runs many executors at once), where 3 s was sometimes spent by kubectl alone.
    let started = std::time::Instant::now();
    let outcome = w.run(&plugin("false", 10), Action::Install).await;
    assert_eq!(outcome.code, Some(6), "{outcome:#?}");
    assert!(
        outcome
            .message
            .contains("successStateCommand did not exit 0 within 10s"),
        "{outcome:#?}"
    );
    assert!(started.elapsed() < Duration::from_secs(40));

    // A command that hangs is cut off by the time limit too.
    let started = std::time::Instant::now();
    let outcome = w.run(&plugin("sleep 600", 10), Action::Install).await;
    assert_eq!(outcome.code, Some(6), "{outcome:#?}");
    assert!(started.elapsed() < Duration::from_secs(40));
    w.ns.delete().await.unwrap();
}

#[tokio::test]
async fn hostile_values_stay_data_when_the_script_runs() {
    let mut w = World::new("exec-hostile").await;
    let marker = w.tmp.path().join("pwned");
    let evil = format!("$(touch {m})`touch {m}`;touch {m}", m = marker.display());
    // A folder really called like that, holding a manifest: the script must use it as a path.
    let claim = w.claim("store");
    let folder = claim.join(&evil);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("cm.yaml"), configmap_yaml("hostile", "1")).unwrap();
    let plugin = format!(
        "metadata: {{name: hostile}}\nspec:\n  pluginSources:\n    yaml:\n      namespace: {}\n      path:\n        pvPath: {:?}\n",
        w.ns(),
        format!("store:/pv/{evil}")
    );
    let outcome = w.run(&plugin, Action::Install).await;
    assert_ok(&outcome);
    assert!(w.configmap("hostile").await.is_some());
    assert!(
        !marker.exists(),
        "a value was run as a command: {outcome:#?}"
    );
    w.ns.delete().await.unwrap();
}

/// Runs a local tool from the pinned set and returns its stdout.
fn tool(name: &str, args: &[&str], dir: &Path) -> Vec<u8> {
    let mut path: Vec<PathBuf> = common::tool_dirs();
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let out = std::process::Command::new(name)
        .args(args)
        .current_dir(dir)
        .env("PATH", std::env::join_paths(path).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{name} {args:?}: {out:?}");
    out.stdout
}

#[tokio::test]
async fn archives_from_uris_a_packaged_chart_and_a_manifest_bundle() {
    let w = World::new("exec-archives").await;
    // A packaged chart, as `helm package` makes it.
    let src = w.tmp.path().join("src");
    write_chart(&src.join("demo"));
    tool("helm", &["package", "demo", "--destination", "."], &src);
    let chart_tgz = std::fs::read(src.join("demo-0.1.0.tgz")).unwrap();
    // A bundle of manifests in nested folders.
    std::fs::create_dir_all(src.join("bundle/nested")).unwrap();
    std::fs::write(src.join("bundle/a.yaml"), configmap_yaml("bundled-a", "1")).unwrap();
    std::fs::write(
        src.join("bundle/nested/b.yaml"),
        configmap_yaml("bundled-b", "2"),
    )
    .unwrap();
    let status = std::process::Command::new("tar")
        .args(["-czf", "bundle.tar.gz", "-C", "bundle", "."])
        .current_dir(&src)
        .status()
        .unwrap();
    assert!(status.success());
    let bundle = std::fs::read(src.join("bundle.tar.gz")).unwrap();
    let chart_sha = sha256_hex(&chart_tgz);
    let base = serve_paths(BTreeMap::from([
        ("/demo-0.1.0.tgz".to_owned(), chart_tgz),
        ("/bundle.tar.gz".to_owned(), bundle),
        ("/values.yaml".to_owned(), b"color: green\n".to_vec()),
    ]))
    .await;
    let release = format!("arch-{}", &w.ns()[w.ns().len() - 5..]);
    let plugin = format!(
        "metadata: {{name: archives}}\nspec:\n  pluginSources:\n    chart:\n      releaseName: {release}\n      namespace: {ns}\n      storage:\n        uri: {base}/charts/demo-0.1.0.tgz\n        sha256: {chart_sha}\n      valuesFile:\n        uri: {base}/values.yaml\n    yaml:\n      namespace: {ns}\n      path:\n        uri: {base}/bundle.tar.gz\n",
        ns = w.ns()
    );
    let outcome = w.run(&plugin, Action::Install).await;
    assert_ok(&outcome);
    let cm = w.configmap(&format!("{release}-settings")).await.unwrap();
    assert_eq!(cm.data.unwrap()["color"], "green");
    assert!(w.configmap("bundled-a").await.is_some());
    assert!(w.configmap("bundled-b").await.is_some());

    assert_ok(&w.run(&plugin, Action::Uninstall).await);
    assert!(w.configmap("bundled-a").await.is_none());
    assert!(w.configmap(&format!("{release}-settings")).await.is_none());

    // A URL that answers 404 fails the fetch step with the URL in the message.
    let missing = plugin.replace("bundle.tar.gz", "missing.tar.gz");
    let outcome = w.run(&missing, Action::Install).await;
    assert_eq!(outcome.code, Some(3), "{outcome:#?}");
    assert!(outcome.message.contains("missing.tar.gz"), "{outcome:#?}");
    w.ns.delete().await.unwrap();
}

#[tokio::test]
async fn yaml_namespace_is_a_default_not_a_constraint() {
    let mut w = World::new("exec-ns-default").await;
    let other = TestNamespace::create(Cluster::Virtual, "exec-ns-other")
        .await
        .unwrap();
    let claim = w.claim("store");
    std::fs::write(
        claim.join("plain.yaml"),
        configmap_yaml("no-namespace", "1"),
    )
    .unwrap();
    std::fs::write(
        claim.join("placed.yaml"),
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: placed\n  namespace: {}\n",
            other.name()
        ),
    )
    .unwrap();
    let plugin = format!(
        "metadata: {{name: ns-default}}\nspec:\n  pluginSources:\n    yaml:\n      namespace: {}\n      path:\n        pvPath: store:/pv\n",
        w.ns()
    );
    assert_ok(&w.run(&plugin, Action::Install).await);
    assert!(w.configmap("no-namespace").await.is_some());
    let client = kosmos_e2e::virtual_cluster().await.unwrap();
    let placed = Api::<ConfigMap>::namespaced(client.clone(), other.name())
        .get_opt("placed")
        .await
        .unwrap();
    assert!(placed.is_some(), "a manifest's own namespace wins");

    assert_ok(&w.run(&plugin, Action::Uninstall).await);
    assert!(w.configmap("no-namespace").await.is_none());
    let placed = Api::<ConfigMap>::namespaced(client, other.name())
        .get_opt("placed")
        .await
        .unwrap();
    assert!(placed.is_none());
    other.delete().await.unwrap();
    w.ns.delete().await.unwrap();
}

/// The shell-injection corpus (`testdata/shell-injection.json`): `@MARK@` in a payload stands for
/// a file that exists only if a payload was run, `@EVIL@` for a script that creates it.
fn injection_corpus(mark: &Path, evil: &Path) -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/shell-injection.json");
    let raw: Vec<String> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    raw.iter()
        .map(|p| {
            p.replace("@MARK@", &mark.display().to_string())
                .replace("@EVIL@", &evil.display().to_string())
        })
        .collect()
}

/// Every field of a plugin whose value reaches the executor, with a payload planted in it.
const PLANTED_FIELDS: [&str; 9] = [
    "metadata.name",
    "yaml.path.pvPath",
    "yaml.path.hostPath.path",
    "yaml.path.uri",
    "chart.name",
    "chart.repo",
    "chart.version",
    "chart.values",
    "chart.valuesFile.hostPath.path",
];

fn planted_plugin(
    field: &str,
    payload: &str,
    ns: &str,
    base: &str,
) -> kosmos_api::VirtualClusterPlugin {
    use kosmos_api::{ChartSource, HostPath, PluginSources, Storage, YamlSource};
    let yaml = |path: Storage| PluginSources {
        yaml: Some(YamlSource {
            path,
            namespace: None,
        }),
        chart: None,
    };
    let repo_chart = |name: &str, repo: &str, version: Option<&str>| PluginSources {
        chart: Some(ChartSource {
            name: Some(name.to_owned()),
            repo: Some(repo.to_owned()),
            version: version.map(str::to_owned),
            release_name: Some("inj".to_owned()),
            namespace: Some(ns.to_owned()),
            ..ChartSource::default()
        }),
        yaml: None,
    };
    let closed = "http://127.0.0.1:1/charts";
    let sources = match field {
        "metadata.name" => yaml(Storage {
            pv_path: Some("store:/pv/missing".to_owned()),
            ..Storage::default()
        }),
        "yaml.path.pvPath" => yaml(Storage {
            pv_path: Some(format!("store:/pv/{payload}")),
            ..Storage::default()
        }),
        "yaml.path.hostPath.path" => yaml(Storage {
            host_path: Some(HostPath {
                path: format!("/nonexistent/{payload}"),
                node_name: None,
            }),
            ..Storage::default()
        }),
        "yaml.path.uri" => yaml(Storage {
            uri: Some(format!("{base}/{payload}")),
            ..Storage::default()
        }),
        "chart.name" => repo_chart(payload, closed, None),
        "chart.repo" => repo_chart("demo", &format!("http://127.0.0.1:1/{payload}"), None),
        "chart.version" => repo_chart("demo", closed, Some(payload)),
        "chart.values" => {
            let mut s = repo_chart("demo", closed, None);
            s.chart.as_mut().unwrap().values = Some(payload.to_owned());
            s
        }
        "chart.valuesFile.hostPath.path" => {
            let mut s = repo_chart("demo", closed, None);
            s.chart.as_mut().unwrap().values_file = Some(Storage {
                host_path: Some(HostPath {
                    path: format!("/nonexistent/{payload}"),
                    node_name: None,
                }),
                ..Storage::default()
            });
            s
        }
        other => panic!("no field {other}"),
    };
    let name = if field == "metadata.name" {
        payload
    } else {
        "injected"
    };
    let mut plugin = kosmos_api::VirtualClusterPlugin::new(
        name,
        kosmos_api::VirtualClusterPluginSpec {
            plugin_sources: sources,
            timeout_seconds: Some(30),
            ..Default::default()
        },
    );
    plugin.metadata.namespace = Some("tenants".to_owned());
    plugin
}

/// Every payload of the corpus in every field that reaches the executor, through the webhook's
/// validation and mutation: each is refused by the validation, or reaches the executor script,
/// which runs for real and must not run it (the marker file stays absent) nor succeed.
#[tokio::test]
async fn shell_injection_corpus_through_the_mutation_stays_inert() {
    let mut w = World::new("exec-inject").await;
    w.claim("store");
    let mark = w.tmp.path().join("pwned");
    let evil = w.file(
        "evil.sh",
        &format!("#!/bin/sh\ntouch '{}'\n", mark.display()),
    );
    std::fs::set_permissions(&evil, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let corpus = injection_corpus(&mark, &evil);
    assert!(corpus.len() >= 30, "only {} payloads", corpus.len());
    let base = serve_paths(BTreeMap::new()).await;
    let vc = common::virtual_cluster("tenants", VC);
    let (mut refused, mut ran) = (0, 0);
    let mut problems = Vec::new();
    for field in PLANTED_FIELDS {
        for payload in &corpus {
            let plugin = planted_plugin(field, payload, w.ns(), &base);
            let job = common::bare_job("tenants", VC, &plugin, Action::Install);
            let Ok(mutation) = mutate_job(&job, &plugin, &vc, &common::any_host_path()) else {
                refused += 1;
                continue;
            };
            if payload.contains('\0') {
                problems.push(format!(
                    "{field} {payload:?}: a NUL byte passed the validation"
                ));
                continue;
            }
            ran += 1;
            let outcome = w.execute(&mutation.apply(&job).unwrap()).await;
            if mark.exists() {
                problems.push(format!("{field} {payload:?}: RAN the payload: {outcome:?}"));
                std::fs::remove_file(&mark).unwrap();
            }
            // Nothing was there to install: success would mean the payload changed the command.
            if field != "metadata.name" && outcome.code == Some(0) {
                problems.push(format!("{field} {payload:?}: succeeded: {outcome:?}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Both paths were taken: the corpus is not simply refused wholesale.
    assert!(ran >= 100 && refused >= 30, "ran {ran}, refused {refused}");
    w.ns.delete().await.unwrap();
}

/// The executor script alone, each corpus payload put straight into each environment variable
/// that carries a value from a plugin (as if the validation had let everything through): none is
/// run, none makes the script succeed. The flag-like payloads (`--post-renderer=…`, `--help`,
/// `-o…`) are the ones that turned `helm upgrade --install` into something else before the
/// release and chart came after `--`.
#[tokio::test]
async fn shell_injection_corpus_in_the_environment_stays_inert() {
    let mut w = World::new("exec-inject-env").await;
    let mark = w.tmp.path().join("pwned");
    let evil = w.file(
        "evil.sh",
        &format!("#!/bin/sh\ntouch '{}'\n", mark.display()),
    );
    std::fs::set_permissions(&evil, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let claim = w.claim("charts");
    write_chart(&claim.join("demo"));
    let chart = claim.join("demo").display().to_string();
    let base = serve_paths(BTreeMap::new()).await;
    // An environment variable cannot hold a NUL; the validation refuses those (test above).
    let corpus: Vec<String> = injection_corpus(&mark, &evil)
        .into_iter()
        .filter(|p| !p.contains('\0'))
        .collect();
    let ns = w.ns().to_owned();
    // variable -> the other variables that make the script reach the place the value is used
    let owned = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    // A real chart, release and namespace; `extra` replaces or adds variables.
    let chart_env = |extra: &[(&str, &str)]| -> Vec<(String, String)> {
        let mut env = owned(&[
            (executor_env::CHART.path, chart.as_str()),
            (executor_env::CHART_RELEASE, "inj"),
            (executor_env::CHART_NAMESPACE, ns.as_str()),
        ]);
        for (k, v) in owned(extra) {
            env.retain(|(name, _)| *name != k);
            env.push((k, v));
        }
        env
    };
    let download = w.tmp.path().join("download/yaml").display().to_string();
    let mut problems = Vec::new();
    let mut runs = 0;
    for payload in &corpus {
        let p = payload.as_str();
        let url = format!("{base}/{p}");
        let cases: Vec<(&str, Vec<(String, String)>)> = vec![
            (
                executor_env::YAML.path,
                owned(&[(executor_env::YAML.path, p)]),
            ),
            (
                executor_env::YAML_NAMESPACE,
                owned(&[
                    (executor_env::YAML.path, "/nonexistent"),
                    (executor_env::YAML_NAMESPACE, p),
                ]),
            ),
            (
                executor_env::YAML.uri,
                owned(&[
                    (executor_env::YAML.uri, p),
                    (executor_env::YAML.download, &download),
                    (executor_env::YAML.path, &download),
                ]),
            ),
            (
                "YAML_URI (after a base URL)",
                owned(&[
                    (executor_env::YAML.uri, &url),
                    (executor_env::YAML.download, &download),
                    (executor_env::YAML.path, &download),
                ]),
            ),
            (
                executor_env::CHART.path,
                chart_env(&[(executor_env::CHART.path, p)]),
            ),
            // An invalid namespace beside the payload: a release that got through must still fail.
            (
                executor_env::CHART_RELEASE,
                chart_env(&[
                    (executor_env::CHART_RELEASE, p),
                    (executor_env::CHART_NAMESPACE, "-"),
                ]),
            ),
            (
                executor_env::CHART_NAMESPACE,
                chart_env(&[
                    (executor_env::CHART_NAMESPACE, p),
                    (executor_env::CHART_RELEASE, "-"),
                ]),
            ),
            (
                executor_env::CHART_NAME,
                chart_env(&[
                    (executor_env::CHART.path, ""),
                    (executor_env::CHART_NAME, p),
                    (executor_env::CHART_REPO, "http://127.0.0.1:1/"),
                ]),
            ),
            (
                executor_env::CHART_REPO,
                chart_env(&[
                    (executor_env::CHART.path, ""),
                    (executor_env::CHART_NAME, "demo"),
                    (executor_env::CHART_REPO, p),
                ]),
            ),
            (
                executor_env::CHART_VERSION,
                chart_env(&[
                    (executor_env::CHART.path, ""),
                    (executor_env::CHART_NAME, "demo"),
                    (executor_env::CHART_REPO, "http://127.0.0.1:1/"),
                    (executor_env::CHART_VERSION, p),
                ]),
            ),
            (
                executor_env::VALUES.path,
                chart_env(&[
                    (executor_env::VALUES.path, p),
                    (executor_env::CHART_RELEASE, "-"),
                ]),
            ),
            (
                executor_env::CHART_VALUES,
                chart_env(&[
                    (executor_env::CHART_VALUES, p),
                    (executor_env::CHART_RELEASE, "-"),
                ]),
            ),
            (
                executor_env::PLUGIN_ACTION,
                owned(&[(executor_env::PLUGIN_ACTION, p)]),
            ),
        ];
        for (var, env) in cases {
            runs += 1;
            let mut env: Vec<(String, String)> = env
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            if !env.iter().any(|(k, _)| k == executor_env::PLUGIN_ACTION) {
                env.push((executor_env::PLUGIN_ACTION.to_owned(), "install".to_owned()));
            }
            let outcome = w.run_script(&env).await;
            if mark.exists() {
                problems.push(format!("{var}={p:?}: RAN the payload: {outcome:?}"));
                std::fs::remove_file(&mark).unwrap();
            }
            if outcome.code == Some(0) {
                problems.push(format!("{var}={p:?}: succeeded: {outcome:?}"));
            }
        }
        // Only in messages: the install succeeds and the message carries the name as it is.
        let outcome = w
            .run_script(&[
                (executor_env::PLUGIN_ACTION.to_owned(), "install".to_owned()),
                (executor_env::PLUGIN_NAME.to_owned(), p.to_owned()),
            ])
            .await;
        runs += 1;
        let first_line = p.lines().next().unwrap_or_default();
        if mark.exists() || outcome.code != Some(0) || !outcome.message.contains(first_line) {
            problems.push(format!("PLUGIN_NAME={p:?}: {outcome:?}"));
            let _ = std::fs::remove_file(&mark);
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {runs} runs:\n{}",
        problems.len(),
        problems.join("\n")
    );
    w.ns.delete().await.unwrap();
}

/// Every payload of the corpus as a Helm value, installed for real: the chart renders each one
/// back byte for byte, so each stayed data all the way into the virtual cluster.
#[tokio::test]
async fn shell_injection_corpus_as_helm_values_arrives_as_data() {
    let mut w = World::new("exec-inject-values").await;
    let mark = w.tmp.path().join("pwned");
    let evil = w.tmp.path().join("evil.sh");
    let claim = w.claim("charts");
    let dir = claim.join("echo");
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(
        dir.join("Chart.yaml"),
        "apiVersion: v2\nname: echo\nversion: 0.1.0\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("templates/cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-payloads\ndata:\n{{- range $k, $v := .Values.payloads }}\n  {{ $k }}: {{ $v | quote }}\n{{- end }}\n",
    )
    .unwrap();
    // A ConfigMap value cannot hold a NUL either.
    let corpus: Vec<String> = injection_corpus(&mark, &evil)
        .into_iter()
        .filter(|p| !p.contains('\0'))
        .collect();
    let payloads: BTreeMap<String, &String> = corpus
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("p{i:02}"), p))
        .collect();
    let values = serde_yaml::to_string(&serde_json::json!({ "payloads": payloads })).unwrap();
    let release = format!("inj-{}", &w.ns()[w.ns().len() - 5..]);
    let mut plugin = planted_plugin("chart.values", &values, w.ns(), "");
    let chart = plugin.spec.plugin_sources.chart.as_mut().unwrap();
    chart.repo = None;
    chart.name = None;
    chart.release_name = Some(release.clone());
    chart.storage = Some(kosmos_api::Storage {
        pv_path: Some("charts:/charts/echo".to_owned()),
        ..Default::default()
    });
    let job = common::bare_job("tenants", VC, &plugin, Action::Install);
    let vc = common::virtual_cluster("tenants", VC);
    let mutation = mutate_job(&job, &plugin, &vc, &common::any_host_path()).unwrap();
    let outcome = w.execute(&mutation.apply(&job).unwrap()).await;
    assert_ok(&outcome);
    assert!(!mark.exists(), "a value was run as a command: {outcome:#?}");
    let data = w
        .configmap(&format!("{release}-payloads"))
        .await
        .expect("the chart's ConfigMap")
        .data
        .unwrap();
    for (key, payload) in &payloads {
        assert_eq!(data.get(key), Some(*payload), "{key}");
    }
    w.ns.delete().await.unwrap();
}

/// A VirtualCluster with `options`: (name, literal value) or (name, Secret name, key).
fn cluster_with_options(
    literal: &[(&str, &str)],
    from_secret: &[(&str, &str, &str)],
) -> VirtualCluster {
    let mut vc = common::virtual_cluster("tenants", VC);
    let mut options: Vec<PluginOption> = literal
        .iter()
        .map(|(name, value)| PluginOption {
            name: (*name).to_owned(),
            value: Some((*value).to_owned()),
            value_from: None,
        })
        .collect();
    options.extend(from_secret.iter().map(|(name, secret, key)| PluginOption {
        name: (*name).to_owned(),
        value: None,
        value_from: Some(OptionValueSource {
            secret_key_ref: Some(KeyRef {
                name: (*secret).to_owned(),
                key: (*key).to_owned(),
            }),
            config_map_key_ref: None,
        }),
    }));
    vc.spec.plugin_options = Some(options);
    vc
}

/// The virtual apiserver's URL as its kubeconfig names it: what `kosmos.virtualCluster.server`
/// must hold.
async fn virtual_server() -> String {
    let text = kosmos_e2e::kubeconfig_yaml(Cluster::Virtual).await.unwrap();
    let config: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    config["clusters"][0]["cluster"]["server"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A chart whose one ConfigMap shows every parameter it was given.
fn write_parameters_chart(dir: &Path) {
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(
        dir.join("Chart.yaml"),
        "apiVersion: v2\nname: params\nversion: 0.1.0\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("templates/cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-params\ndata:\n  vc: {{ .Values.kosmos.virtualCluster.name | quote }}\n  vcNamespace: {{ .Values.kosmos.virtualCluster.namespace | quote }}\n  server: {{ .Values.kosmos.virtualCluster.server | quote }}\n  plugin: {{ .Values.kosmos.plugin.name | quote }}\n  dns: {{ .Values.kosmos.options.dnsIP | quote }}\n  password: {{ .Values.kosmos.options.password | quote }}\n  mine: {{ .Values.mine | quote }}\n",
    )
    .unwrap();
}

#[tokio::test]
async fn options_reach_a_charts_values_under_kosmos() {
    let mut w = World::new("exec-opt-chart").await;
    write_parameters_chart(&w.claim("charts").join("params"));
    w.sources.insert(
        "db".into(),
        BTreeMap::from([("password".to_owned(), b"s3cret from a Secret".to_vec())]),
    );
    let release = format!("params-{}", &w.ns()[w.ns().len() - 5..]);
    // The plugin's own values cannot override what the cluster says (kosmos comes last).
    let plugin = format!(
        "metadata: {{name: params}}\nspec:\n  pluginSources:\n    chart:\n      releaseName: {release}\n      namespace: {ns}\n      storage:\n        pvPath: charts:/charts/params\n      values: |\n        mine: plugin-value\n        kosmos:\n          options:\n            dnsIP: overridden-by-the-plugin\n",
        ns = w.ns()
    );
    let vc = cluster_with_options(
        &[("dnsIP", "10.96.0.10")],
        &[("password", "db", "password")],
    );
    let outcome = w.run_for(&plugin, &vc, Action::Install).await;
    assert_ok(&outcome);
    assert!(
        !outcome.stderr.contains("s3cret"),
        "a Secret's value was logged: {outcome:#?}"
    );
    let data = w
        .configmap(&format!("{release}-params"))
        .await
        .expect("the chart's ConfigMap")
        .data
        .unwrap();
    assert_eq!(data["vc"], VC);
    assert_eq!(data["vcNamespace"], "tenants");
    assert_eq!(data["server"], virtual_server().await);
    assert_eq!(data["plugin"], "params");
    assert_eq!(data["dns"], "10.96.0.10");
    assert_eq!(data["password"], "s3cret from a Secret");
    assert_eq!(data["mine"], "plugin-value");
    assert_ok(&w.run_for(&plugin, &vc, Action::Uninstall).await);
    w.ns.delete().await.unwrap();
}

/// A kustomization that takes the parameters through `replacements` from kosmos-options.yaml.
fn write_parameters_kustomization(w: &World, dir: &str) -> PathBuf {
    w.file(
        &format!("{dir}/cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kustomized-params\ndata:\n  dns: placeholder\n  password: placeholder\n  server: placeholder\n  vc: placeholder\n",
    );
    let kustomization = "resources:\n- cm.yaml\n- kosmos-options.yaml\nreplacements:\n- source: {kind: ConfigMap, name: kosmos-options, fieldPath: data.dnsIP}\n  targets:\n  - select: {kind: ConfigMap, name: kustomized-params}\n    fieldPaths: [data.dns]\n- source: {kind: ConfigMap, name: kosmos-options, fieldPath: data.password}\n  targets:\n  - select: {kind: ConfigMap, name: kustomized-params}\n    fieldPaths: [data.password]\n- source: {kind: ConfigMap, name: kosmos-virtual-cluster, fieldPath: data.server}\n  targets:\n  - select: {kind: ConfigMap, name: kustomized-params}\n    fieldPaths: [data.server]\n- source: {kind: ConfigMap, name: kosmos-virtual-cluster, fieldPath: data.name}\n  targets:\n  - select: {kind: ConfigMap, name: kustomized-params}\n    fieldPaths: [data.vc]\n";
    let file = w.file(&format!("{dir}/kustomization.yaml"), kustomization);
    let dir = file.parent().unwrap().to_owned();
    // The plugin's folder is read-only in the pod.
    for path in [dir.join("cm.yaml"), file, dir.clone()] {
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        perms.set_readonly(true);
        std::fs::set_permissions(&path, perms).unwrap();
    }
    dir
}

#[tokio::test]
async fn options_reach_a_kustomization_through_replacements() {
    let mut w = World::new("exec-opt-kust").await;
    w.sources.insert(
        "db".into(),
        BTreeMap::from([("password".to_owned(), b"kustomized s3cret".to_vec())]),
    );
    let dir = write_parameters_kustomization(&w, "kust-params");
    let plugin = format!(
        "metadata: {{name: kust-params}}\nspec:\n  pluginSources:\n    yaml:\n      namespace: {}\n      path:\n        hostPath:\n          path: {}\n",
        w.ns(),
        dir.display()
    );
    let vc = cluster_with_options(
        &[("dnsIP", "10.96.0.10")],
        &[("password", "db", "password")],
    );
    let outcome = w.run_for(&plugin, &vc, Action::Install).await;
    assert_ok(&outcome);
    let data = w
        .configmap("kustomized-params")
        .await
        .unwrap()
        .data
        .unwrap();
    assert_eq!(data["dns"], "10.96.0.10");
    assert_eq!(data["password"], "kustomized s3cret");
    assert_eq!(data["server"], virtual_server().await);
    assert_eq!(data["vc"], VC);
    // The sources are local-config: used by kustomize, never applied.
    for name in ["kosmos-options", "kosmos-virtual-cluster", "kosmos-plugin"] {
        assert!(w.configmap(name).await.is_none(), "{name} was applied");
    }
    assert_ok(&w.run_for(&plugin, &vc, Action::Uninstall).await);
    assert!(w.configmap("kustomized-params").await.is_none());
    // Read-only again for the temp folder's cleanup.
    let mut perms = std::fs::metadata(&dir).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&dir, perms).unwrap();
    w.ns.delete().await.unwrap();
}

#[tokio::test]
async fn hostile_option_content_stays_inert() {
    let mut w = World::new("exec-opt-hostile").await;
    let marker = w.tmp.path().join("pwned");
    // Shell, Helm --set syntax, YAML and JSON structure, a newline: all must arrive as text.
    let evil = format!(
        "$(touch {m})`touch {m}`;touch {m} \"q\" 'q' \\ a,b=c [0] {{x: 1}}\nkosmos: pwned\n--- ",
        m = marker.display()
    );
    write_parameters_chart(&w.claim("charts").join("params"));
    w.sources.insert(
        "db".into(),
        BTreeMap::from([("password".to_owned(), evil.clone().into_bytes())]),
    );
    let release = format!("hostile-{}", &w.ns()[w.ns().len() - 5..]);
    let plugin = format!(
        "metadata: {{name: params}}\nspec:\n  pluginSources:\n    chart:\n      releaseName: {release}\n      namespace: {ns}\n      storage:\n        pvPath: charts:/charts/params\n",
        ns = w.ns()
    );
    let vc = cluster_with_options(&[("dnsIP", &evil)], &[("password", "db", "password")]);
    let outcome = w.run_for(&plugin, &vc, Action::Install).await;
    assert_ok(&outcome);
    let data = w
        .configmap(&format!("{release}-params"))
        .await
        .unwrap()
        .data
        .unwrap();
    assert_eq!(data["dns"], evil);
    assert_eq!(data["password"], evil);

    let dir = write_parameters_kustomization(&w, "kust-hostile");
    let kust = format!(
        "metadata: {{name: kust-params}}\nspec:\n  pluginSources:\n    yaml:\n      namespace: {}\n      path:\n        hostPath:\n          path: {}\n",
        w.ns(),
        dir.display()
    );
    assert_ok(&w.run_for(&kust, &vc, Action::Install).await);
    let data = w
        .configmap("kustomized-params")
        .await
        .unwrap()
        .data
        .unwrap();
    assert_eq!(data["dns"], evil);
    assert_eq!(data["password"], evil);
    assert!(!marker.exists(), "an option was run as a command");
    let mut perms = std::fs::metadata(&dir).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&dir, perms).unwrap();
    w.ns.delete().await.unwrap();
}

#[tokio::test]
async fn a_missing_secret_fails_naming_the_option_and_plain_yaml_ignores_options() {
    let mut w = World::new("exec-opt-missing").await;
    write_parameters_chart(&w.claim("charts").join("params"));
    let plugin = format!(
        "metadata: {{name: params}}\nspec:\n  pluginSources:\n    chart:\n      releaseName: missing-{}\n      namespace: {}\n      storage:\n        pvPath: charts:/charts/params\n",
        &w.ns()[w.ns().len() - 5..],
        w.ns()
    );
    let vc = cluster_with_options(&[], &[("password", "absent", "password")]);
    let outcome = w.run_for(&plugin, &vc, Action::Install).await;
    assert_eq!(outcome.code, Some(2), "{outcome:#?}");
    assert_eq!(
        outcome.message.trim(),
        "plugin option password: Secret absent key password not found (the Secret or ConfigMap, \
         or its key, is missing in the VirtualCluster's namespace)"
    );

    // Plain manifests take no parameters: the same cluster installs them untouched.
    let claim = w.claim("store");
    std::fs::write(claim.join("cm.yaml"), configmap_yaml("plain", "as-written")).unwrap();
    let plain = format!(
        "metadata: {{name: plain}}\nspec:\n  pluginSources:\n    yaml:\n      namespace: {}\n      path:\n        pvPath: store:/pv\n",
        w.ns()
    );
    let vc = cluster_with_options(&[("dnsIP", "10.96.0.10")], &[]);
    assert_ok(&w.run_for(&plain, &vc, Action::Install).await);
    assert_eq!(
        w.configmap("plain").await.unwrap().data.unwrap()["value"],
        "as-written"
    );
    w.ns.delete().await.unwrap();
}

/// A virtual cluster whose API server does not answer fails the attempt with a message that
/// says so and names the server (exit 7), before any install or uninstall step runs, instead of
/// a bare "kubectl apply failed".
#[tokio::test]
async fn an_unreachable_virtual_cluster_fails_saying_so() {
    let mut w = World::new("exec-unreachable").await;
    let claim = w.claim("store");
    std::fs::write(claim.join("cm.yaml"), configmap_yaml("never", "1")).unwrap();
    // Nothing listens on port 1.
    let dead = w.file(
        "dead.kubeconfig",
        "apiVersion: v1\nkind: Config\nclusters:\n- name: gone\n  cluster:\n    server: https://127.0.0.1:1\ncontexts:\n- name: gone\n  context:\n    cluster: gone\n    user: admin\ncurrent-context: gone\nusers:\n- name: admin\n  user:\n    token: x\n",
    );
    for action in ["install", "uninstall"] {
        let outcome = w
            .run_script(&[
                (
                    executor_env::KUBECONFIG.to_owned(),
                    dead.display().to_string(),
                ),
                (executor_env::PLUGIN_ACTION.to_owned(), action.to_owned()),
                (executor_env::PLUGIN_NAME.to_owned(), "gone".to_owned()),
                (
                    executor_env::YAML.path.to_owned(),
                    claim.join("cm.yaml").display().to_string(),
                ),
                (executor_env::YAML_NAMESPACE.to_owned(), w.ns().to_owned()),
            ])
            .await;
        assert_eq!(outcome.code, Some(7), "{action}: {outcome:#?}");
        assert!(
            outcome
                .message
                .starts_with("virtual cluster API server https://127.0.0.1:1 is unreachable: ")
                && outcome.message.contains("refused"),
            "{action}: {outcome:#?}"
        );
    }
    // Nothing was attempted.
    assert!(w.configmap("never").await.is_none());
    w.ns.delete().await.unwrap();
}

/// The environment of a plain-manifests install (or uninstall) of the folder `path`.
fn yaml_run(w: &World, action: &str, plugin: &str, path: &Path) -> Vec<(String, String)> {
    vec![
        (executor_env::PLUGIN_ACTION.to_owned(), action.to_owned()),
        (executor_env::PLUGIN_NAME.to_owned(), plugin.to_owned()),
        (
            executor_env::YAML.path.to_owned(),
            path.display().to_string(),
        ),
        (executor_env::YAML_NAMESPACE.to_owned(), w.ns().to_owned()),
    ]
}

/// A plugin whose manifests hold a CustomResourceDefinition and an object of its kind, as many
/// add-ons ship them: the first `kubectl apply` creates the definition but cannot map the object
/// ("no matches for kind ... ensure CRDs are installed first"); the executor tries again, says
/// why, and the second try installs the object. Without the retry the install fails every time
/// (a fresh kubectl has no discovery of the new kind).
#[tokio::test]
async fn a_kind_defined_in_the_same_manifests_installs_on_a_second_try() {
    let mut w = World::new("exec-retry-crd").await;
    let group = format!("{}.e2e.kosmos.io", w.ns());
    let claim = w.claim("store");
    std::fs::write(
        claim.join("manifests.yaml"),
        format!(
            "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: widgets.{group}\nspec:\n  group: {group}\n  names: {{kind: Widget, plural: widgets, singular: widget, listKind: WidgetList}}\n  scope: Namespaced\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema:\n        type: object\n        x-kubernetes-preserve-unknown-fields: true\n---\napiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: first\nspec: {{size: 3}}\n"
        ),
    )
    .unwrap();
    let outcome = w
        .run_script(&yaml_run(&w, "install", "widgets", &claim))
        .await;
    assert_ok(&outcome);
    assert_eq!(outcome.message.trim(), "plugin widgets installed");
    assert!(
        outcome.stderr.contains(&format!(
            "executor: kubectl apply -f {} failed (try 1 of 4): a kind is not served yet",
            claim.display()
        )),
        "{outcome:#?}"
    );
    let widget = kosmos_e2e::kubectl(
        Cluster::Virtual,
        &[
            "-n",
            w.ns(),
            "get",
            &format!("widgets.{group}"),
            "first",
            "-o",
            "name",
        ],
    )
    .await
    .unwrap();
    assert_eq!(widget.trim(), format!("widget.{group}/first"));

    // Uninstall takes both away again (the definition is cluster-wide).
    assert_ok(
        &w.run_script(&yaml_run(&w, "uninstall", "widgets", &claim))
            .await,
    );
    let left = kosmos_e2e::kubectl(
        Cluster::Virtual,
        &[
            "get",
            "crd",
            "-o",
            "name",
            "--ignore-not-found",
            &format!("widgets.{group}"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(left.trim(), "", "the CustomResourceDefinition is left");
    w.ns.delete().await.unwrap();
}

/// Two plugins of one virtual cluster may apply the same object at the same moment (a shared
/// Namespace): kubectl's read-then-create loses the race with AlreadyExists for one of them,
/// which the executor tries again. Every one of several executors started together succeeds.
#[tokio::test]
async fn executors_applying_one_namespace_at_once_all_succeed() {
    let mut w = World::new("exec-retry-race").await;
    let shared = format!("{}-shared", w.ns());
    let claim = w.claim("store");
    std::fs::write(
        claim.join("shared.yaml"),
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {shared}\n---\n{}",
            configmap_yaml("shared", "1").replace(
                "metadata:\n",
                &format!("metadata:\n  namespace: {shared}\n")
            )
        ),
    )
    .unwrap();
    let runs = (0..3).map(|i| {
        let env = yaml_run(&w, "install", &format!("shared-{i}"), &claim);
        let w = &w;
        async move { w.run_script(&env).await }
    });
    for outcome in futures::future::join_all(runs).await {
        assert_ok(&outcome);
    }
    let client = kosmos_e2e::virtual_cluster().await.unwrap();
    assert!(
        Api::<ConfigMap>::namespaced(client.clone(), &shared)
            .get_opt("shared")
            .await
            .unwrap()
            .is_some()
    );
    kosmos_e2e::kubectl(
        Cluster::Virtual,
        &["delete", "namespace", &shared, "--wait=false"],
    )
    .await
    .unwrap();
    w.ns.delete().await.unwrap();
}

/// What fails the same way every time is not tried again: an invalid object fails the install
/// at once, and the message carries kubectl's reason.
#[tokio::test]
async fn an_invalid_object_fails_at_once_with_kubectls_reason() {
    let mut w = World::new("exec-no-retry").await;
    let claim = w.claim("store");
    std::fs::write(claim.join("bad.yaml"), configmap_yaml("Not_A_Name", "1")).unwrap();
    let outcome = w
        .run_script(&yaml_run(&w, "install", "invalid", &claim))
        .await;
    assert_eq!(outcome.code, Some(4), "{outcome:#?}");
    assert!(
        outcome
            .message
            .starts_with(&format!("kubectl apply -f {} failed: ", claim.display()))
            && outcome.message.contains("Not_A_Name")
            && outcome.message.contains("invalid"),
        "{outcome:#?}"
    );
    assert!(!outcome.stderr.contains("trying again"), "{outcome:#?}");
    w.ns.delete().await.unwrap();
}
