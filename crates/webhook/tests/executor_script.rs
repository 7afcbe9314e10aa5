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
use kosmos_e2e::{Cluster, TestNamespace};
use kosmos_webhook::{Settings, mutate};
use kube::Api;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const VC: &str = "tenant1-cluster";

/// What one run of the script left behind.
#[derive(Debug)]
struct Outcome {
    code: Option<i32>,
    message: String,
    /// Shown (through Debug) when an assertion fails.
    #[allow(dead_code)]
    stderr: String,
}

/// The world of one test: a namespace in the virtual cluster and a temp folder standing in for
/// the pod's file system.
struct World {
    ns: TestNamespace,
    tmp: tempfile::TempDir,
    /// claim name -> folder playing the claim's contents
    claims: BTreeMap<String, PathBuf>,
}

impl World {
    async fn new(prefix: &str) -> Self {
        Self {
            ns: TestNamespace::create(Cluster::Virtual, prefix)
                .await
                .unwrap(),
            tmp: tempfile::tempdir().unwrap(),
            claims: BTreeMap::new(),
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
        let plugin = common::plugin_from_yaml("tenants", plugin_yaml);
        let job = common::bare_job("tenants", VC, &plugin, action);
        let vc = common::virtual_cluster("tenants", VC);
        let mutation = mutate(&job, &plugin, &vc, &Settings::default()).unwrap();
        let job = common::apply_patch(&job, &mutation.patch);
        self.execute(&job).await
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
            let local = if volume.secret.is_some() {
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
            .env("TERMINATION_LOG", &termination_log)
            .kill_on_drop(true);
        for env in container.env.as_ref().unwrap() {
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

    let started = std::time::Instant::now();
    let outcome = w.run(&plugin("false", 3), Action::Install).await;
    assert_eq!(outcome.code, Some(6), "{outcome:#?}");
    assert!(
        outcome
            .message
            .contains("successStateCommand did not exit 0 within 3s"),
        "{outcome:#?}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));

    // A command that hangs is cut off by the time limit too.
    let started = std::time::Instant::now();
    let outcome = w.run(&plugin("sleep 600", 3), Action::Install).await;
    assert_eq!(outcome.code, Some(6), "{outcome:#?}");
    assert!(started.elapsed() < Duration::from_secs(30));
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
