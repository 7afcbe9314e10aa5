#![allow(clippy::unwrap_used)]

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::PodSpec;
use kosmos_api::contract::{self, Action};
use kosmos_api::{
    ChartSource, HostPath, PluginSources, Storage, VirtualCluster, VirtualClusterPlugin,
    VirtualClusterPluginSpec, YamlSource,
};
use serde_json::{Value, json};

use super::*;

pub(crate) const NAMESPACE: &str = "tenants";
pub(crate) const VIRTUAL_CLUSTER: &str = "tenant1-cluster";

pub(crate) fn plugin(name: &str, spec: VirtualClusterPluginSpec) -> VirtualClusterPlugin {
    let mut plugin = VirtualClusterPlugin::new(name, spec);
    plugin.metadata.namespace = Some(NAMESPACE.into());
    plugin
}

pub(crate) fn virtual_cluster() -> VirtualCluster {
    let mut vc = VirtualCluster::new(VIRTUAL_CLUSTER, Default::default());
    vc.metadata.namespace = Some(NAMESPACE.into());
    vc
}

/// A bare executor Job as the operator creates it (first attempt).
pub(crate) fn bare_job(plugin: &VirtualClusterPlugin, action: Action) -> Job {
    crate::authoring::bare_job(
        plugin,
        &virtual_cluster(),
        action,
        crate::authoring::DEFAULT_EXECUTOR_IMAGE,
    )
}

/// Settings that allow hostPath anywhere (`/`), as an admin must say explicitly.
pub(crate) fn any_host_path() -> Settings {
    Settings {
        allowed_host_path_prefixes: vec!["/".into()],
        ..Settings::default()
    }
}

fn mutated(plugin: &VirtualClusterPlugin, action: Action) -> Job {
    let job = bare_job(plugin, action);
    let m = mutate_job(&job, plugin, &virtual_cluster(), &any_host_path()).unwrap();
    m.apply(&job).unwrap()
}

fn pod(job: &Job) -> &PodSpec {
    job.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn env_of(job: &Job) -> BTreeMap<String, String> {
    pod(job).containers[0]
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name, e.value.unwrap_or_default()))
        .collect()
}

fn mounts_of(job: &Job) -> BTreeMap<String, (String, bool)> {
    pod(job).containers[0]
        .volume_mounts
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|m| (m.name, (m.mount_path, m.read_only.unwrap_or(false))))
        .collect()
}

fn yaml_plugin(path: Storage) -> VirtualClusterPlugin {
    plugin(
        "manifests",
        VirtualClusterPluginSpec {
            plugin_sources: PluginSources {
                yaml: Some(YamlSource {
                    path,
                    namespace: None,
                }),
                chart: None,
            },
            ..Default::default()
        },
    )
}

fn pv(path: &str) -> Storage {
    Storage {
        pv_path: Some(path.into()),
        ..Default::default()
    }
}

fn host(path: &str, node: Option<&str>) -> Storage {
    Storage {
        host_path: Some(HostPath {
            path: path.into(),
            node_name: node.map(Into::into),
        }),
        ..Default::default()
    }
}

fn uri(uri: &str, sha: Option<&str>) -> Storage {
    Storage {
        uri: Some(uri.into()),
        sha256: sha.map(Into::into),
        ..Default::default()
    }
}

fn deny(plugin: &VirtualClusterPlugin, settings: &Settings) -> String {
    let job = bare_job(plugin, Action::Install);
    mutate_job(&job, plugin, &virtual_cluster(), settings)
        .unwrap_err()
        .0
}

#[test]
fn seed_walk_through_mounts_the_claim_at_pv_read_only() {
    let job = mutated(
        &yaml_plugin(pv("plugin-store-ubuntu-statefulset-0:/pv")),
        Action::Install,
    );
    let spec = pod(&job);
    let volume = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "kosmos-pv-0")
        .unwrap();
    let claim = volume.persistent_volume_claim.as_ref().unwrap();
    assert_eq!(claim.claim_name, "plugin-store-ubuntu-statefulset-0");
    assert_eq!(claim.read_only, Some(true));
    assert_eq!(
        mounts_of(&job)["kosmos-pv-0"],
        ("/pv".to_owned(), true),
        "the claim is mounted read-only where the walk-through copied the files"
    );
    let env = env_of(&job);
    assert_eq!(env["YAML_PATH"], "/pv");
    assert_eq!(env["PLUGIN_ACTION"], "install");
    assert_eq!(env["KUBECONFIG"], "/kosmos/kubeconfig/kubeconfig");
    assert!(!env.contains_key("SUCCESS_STATE_COMMAND"));
    let command = spec.containers[0].command.clone().unwrap();
    assert_eq!(command, ["/bin/sh", "-c", EXECUTOR_SCRIPT]);
    assert_eq!(spec.automount_service_account_token, Some(false));
}

#[test]
fn pv_path_to_one_file_or_sub_folder_mounts_the_first_folder() {
    let job = mutated(
        &yaml_plugin(pv("store:/pv/sub//test.yaml")),
        Action::Install,
    );
    assert_eq!(mounts_of(&job)["kosmos-pv-0"].0, "/pv");
    assert_eq!(env_of(&job)["YAML_PATH"], "/pv/sub/test.yaml");
}

#[test]
fn pv_path_over_a_system_folder_is_denied() {
    for bad in [
        "store:/etc/x.yaml",
        "store:/usr",
        "store:/var/run/x",
        "store:/kosmos/x",
    ] {
        let message = deny(&yaml_plugin(pv(bad)), &Settings::default());
        assert!(
            message.contains("spec.pluginSources.yaml.path.pvPath")
                && message.contains("VirtualClusterPlugin tenants/manifests"),
            "{bad}: {message}"
        );
    }
    let message = deny(&yaml_plugin(pv("store:/")), &Settings::default());
    assert!(
        message.contains("would mount the claim over /"),
        "{message}"
    );
}

#[test]
fn two_claims_at_one_mount_point_are_denied_one_claim_twice_is_shared() {
    let mut p = yaml_plugin(pv("a:/pv/manifests"));
    p.spec.plugin_sources.chart = Some(ChartSource {
        storage: Some(pv("b:/pv/chart")),
        ..Default::default()
    });
    let message = deny(&p, &Settings::default());
    assert!(
        message.contains("would both be mounted at /pv"),
        "{message}"
    );

    p.spec.plugin_sources.chart = Some(ChartSource {
        storage: Some(pv("a:/pv/chart")),
        ..Default::default()
    });
    let job = mutated(&p, Action::Install);
    let claims = pod(&job)
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .filter(|v| v.persistent_volume_claim.is_some())
        .count();
    assert_eq!(claims, 1);
    let env = env_of(&job);
    assert_eq!(env["CHART_PATH"], "/pv/chart");
    assert_eq!(env["YAML_PATH"], "/pv/manifests");
}

#[test]
fn host_path_is_read_only_and_pins_the_pod_to_its_node() {
    let job = mutated(
        &yaml_plugin(host("/data/plugins/x.yaml", Some("node1"))),
        Action::Install,
    );
    let spec = pod(&job);
    let volume = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "kosmos-host-0")
        .unwrap();
    assert_eq!(
        volume.host_path.as_ref().unwrap().path,
        "/data/plugins/x.yaml"
    );
    assert_eq!(
        mounts_of(&job)["kosmos-host-0"],
        ("/kosmos/host/0".to_owned(), true)
    );
    assert_eq!(env_of(&job)["YAML_PATH"], "/kosmos/host/0");
    let term = &spec
        .affinity
        .as_ref()
        .unwrap()
        .node_affinity
        .as_ref()
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap()
        .node_selector_terms[0];
    let field = &term.match_fields.as_ref().unwrap()[0];
    assert_eq!(field.key, "metadata.name");
    assert_eq!(field.values.as_deref(), Some(&["node1".to_owned()][..]));
}

#[test]
fn host_path_outside_the_allowed_prefixes_is_denied() {
    let settings = Settings {
        allowed_host_path_prefixes: vec!["/data/plugins".into()],
        ..Settings::default()
    };
    let job = bare_job(&yaml_plugin(host("/data/plugins/x", None)), Action::Install);
    assert!(
        mutate_job(
            &job,
            &yaml_plugin(host("/data/plugins/x", None)),
            &virtual_cluster(),
            &settings
        )
        .is_ok()
    );
    for bad in ["/data/plugins-evil/x", "/etc/kubernetes", "/data"] {
        let message = deny(&yaml_plugin(host(bad, None)), &settings);
        assert!(
            message.contains("spec.pluginSources.yaml.path.hostPath.path")
                && message.contains("outside the folders"),
            "{bad}: {message}"
        );
    }
}

#[test]
fn host_path_is_closed_unless_the_admin_lists_folders() {
    let p = yaml_plugin(host("/var/lib/kubelet/pods", None));
    let message = deny(&p, &Settings::default());
    assert!(
        message.contains("spec.pluginSources.yaml.path.hostPath")
            && message.contains("allows no hostPath"),
        "{message}"
    );
    // The same plugin from a claim or a uri needs no admin.
    let job = bare_job(&yaml_plugin(pv("store:/pv/x.yaml")), Action::Install);
    assert!(
        mutate_job(
            &job,
            &yaml_plugin(pv("store:/pv/x.yaml")),
            &virtual_cluster(),
            &Settings::default()
        )
        .is_ok()
    );
}

#[test]
fn host_paths_are_typed_so_the_node_never_creates_them() {
    let mut p = yaml_plugin(host("/data/manifests", None));
    p.spec.plugin_sources.chart = Some(ChartSource {
        storage: Some(host("/data/chart-1.0.0.tgz", None)),
        values_file: Some(host("/data/values", None)),
        ..Default::default()
    });
    let job = mutated(&p, Action::Install);
    let types: BTreeMap<String, String> = pod(&job)
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .filter_map(|v| {
            let host = v.host_path.as_ref()?;
            Some((host.path.clone(), host.type_.clone().unwrap_or_default()))
        })
        .collect();
    assert_eq!(
        types,
        BTreeMap::from([
            ("/data/chart-1.0.0.tgz".to_owned(), "File".to_owned()),
            ("/data/manifests".to_owned(), "Directory".to_owned()),
            ("/data/values".to_owned(), "File".to_owned()),
        ])
    );
    for (path, kind) in [
        ("/data/chart", "Directory"),
        ("/data/app.YAML", "File"),
        ("/data/list.json", "File"),
    ] {
        let role = if path.ends_with("chart") {
            Role::Chart
        } else {
            Role::Yaml
        };
        assert_eq!(host_path_type(path, role), kind, "{path}");
    }
}

#[test]
fn storage_mounts_are_recursively_read_only_as_configured() {
    let mut p = yaml_plugin(host("/data/manifests", None));
    p.spec.plugin_sources.chart = Some(ChartSource {
        storage: Some(pv("store:/pv/chart")),
        ..Default::default()
    });
    let recursive = |job: &Job| -> BTreeMap<String, Option<String>> {
        pod(job).containers[0]
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .filter(|m| m.read_only == Some(true))
            .map(|m| (m.name.clone(), m.recursive_read_only.clone()))
            .collect()
    };
    let job = mutated(&p, Action::Install);
    let if_possible = Some("IfPossible".to_owned());
    assert_eq!(
        recursive(&job),
        BTreeMap::from([
            ("kosmos-host-0".to_owned(), if_possible.clone()),
            ("kosmos-kubeconfig".to_owned(), None),
            ("kosmos-pv-0".to_owned(), if_possible),
        ])
    );
    for (setting, value) in [
        (RecursiveReadOnly::Enabled, Some("Enabled".to_owned())),
        (RecursiveReadOnly::Disabled, None),
    ] {
        let settings = Settings {
            recursive_read_only: setting,
            ..any_host_path()
        };
        let bare = bare_job(&p, Action::Install);
        let m = mutate_job(&bare, &p, &virtual_cluster(), &settings).unwrap();
        let job = m.apply(&bare).unwrap();
        assert_eq!(recursive(&job)["kosmos-pv-0"], value, "{setting:?}");
        assert_eq!(recursive(&job)["kosmos-host-0"], value, "{setting:?}");
    }
}

#[test]
fn host_paths_on_two_nodes_are_denied() {
    let mut p = yaml_plugin(host("/data/a", Some("node1")));
    p.spec.plugin_sources.chart = Some(ChartSource {
        storage: Some(host("/data/b", Some("node2"))),
        ..Default::default()
    });
    let message = deny(&p, &any_host_path());
    assert!(
        message.contains("spec.pluginSources.yaml.path.hostPath.nodeName")
            && message.contains("node1"),
        "{message}"
    );
}

#[test]
fn uri_is_fetched_into_the_work_folder_with_its_checksum() {
    let sha = "a".repeat(64);
    let job = mutated(
        &yaml_plugin(uri("https://example.com/x.yaml?sig=1", Some(&sha))),
        Action::Install,
    );
    let env = env_of(&job);
    assert_eq!(env["YAML_URI"], "https://example.com/x.yaml?sig=1");
    assert_eq!(env["YAML_SHA256"], sha);
    assert_eq!(
        env["YAML_DOWNLOAD"],
        "/kosmos/work/fetched/yaml/manifests.yaml"
    );
    assert_eq!(env["YAML_PATH"], env["YAML_DOWNLOAD"]);
    assert!(!env.contains_key("YAML_UNPACK"));
    assert_eq!(
        mounts_of(&job)["kosmos-work"],
        ("/kosmos/work".into(), false)
    );

    let job = mutated(
        &yaml_plugin(uri("https://example.com/bundle.tar.gz", None)),
        Action::Install,
    );
    let env = env_of(&job);
    assert_eq!(env["YAML_UNPACK"], "true");
    assert_eq!(env["YAML_PATH"], "/kosmos/work/fetched/yaml/manifests");
    assert!(!env.contains_key("YAML_SHA256"));
}

#[test]
fn chart_from_a_repository_passes_name_version_values_and_wait() {
    let p = plugin(
        "ingress",
        VirtualClusterPluginSpec {
            plugin_sources: PluginSources {
                chart: Some(ChartSource {
                    name: Some("ingress-nginx".into()),
                    repo: Some("https://kubernetes.github.io/ingress-nginx".into()),
                    version: Some("4.11.3".into()),
                    values: Some("controller:\n  replicaCount: 2\n".into()),
                    values_file: Some(uri("https://example.com/values.yaml", None)),
                    wait: true,
                    release_name: Some("nginx".into()),
                    namespace: Some("ingress".into()),
                    storage: None,
                }),
                yaml: None,
            },
            ..Default::default()
        },
    );
    let env = env_of(&mutated(&p, Action::Install));
    assert_eq!(
        env["CHART_REPO"],
        "https://kubernetes.github.io/ingress-nginx"
    );
    assert_eq!(env["CHART_NAME"], "ingress-nginx");
    assert_eq!(env["CHART_VERSION"], "4.11.3");
    assert_eq!(env["CHART_RELEASE"], "nginx");
    assert_eq!(env["CHART_NAMESPACE"], "ingress");
    assert_eq!(env["CHART_WAIT"], "true");
    assert_eq!(env["CHART_VALUES"], "controller:\n  replicaCount: 2\n");
    assert_eq!(
        env["VALUES_PATH"],
        "/kosmos/work/fetched/values/values.yaml"
    );
    assert!(!env.contains_key("CHART_PATH"));

    // Uninstall needs the release only.
    let env = env_of(&mutated(&p, Action::Uninstall));
    assert_eq!(env["PLUGIN_ACTION"], "uninstall");
    assert_eq!(env["CHART_RELEASE"], "nginx");
    assert!(!env.contains_key("CHART_VALUES") && !env.contains_key("VALUES_URI"));
}

#[test]
fn chart_release_defaults_to_the_plugin_name_when_it_can() {
    let spec = VirtualClusterPluginSpec {
        plugin_sources: PluginSources {
            chart: Some(ChartSource {
                storage: Some(pv("store:/charts/x")),
                ..Default::default()
            }),
            yaml: None,
        },
        ..Default::default()
    };
    let env = env_of(&mutated(&plugin("metrics", spec.clone()), Action::Install));
    assert_eq!(env["CHART_RELEASE"], "metrics");
    assert_eq!(env["CHART_NAMESPACE"], "default");
    let message = deny(&plugin("dotted.name", spec), &Settings::default());
    assert!(
        message.contains("spec.pluginSources.chart.releaseName"),
        "{message}"
    );
}

#[test]
fn success_state_command_is_passed_for_install_only() {
    let mut p = yaml_plugin(pv("store:/pv"));
    p.spec.success_state_command = Some("kubectl get ns kube-system".into());
    p.spec.timeout_seconds = Some(42);
    let env = env_of(&mutated(&p, Action::Install));
    assert_eq!(env["SUCCESS_STATE_COMMAND"], "kubectl get ns kube-system");
    assert_eq!(env["PLUGIN_TIMEOUT_SECONDS"], "42");
    let env = env_of(&mutated(&p, Action::Uninstall));
    assert!(!env.contains_key("SUCCESS_STATE_COMMAND"));
}

#[test]
fn reinvocation_with_the_mark_is_an_empty_patch_and_never_duplicates() {
    let p = yaml_plugin(pv("store:/pv"));
    let job = bare_job(&p, Action::Install);
    let first = mutate_job(&job, &p, &virtual_cluster(), &Settings::default()).unwrap();
    assert!(!first.patch.0.is_empty());
    let once = first.apply(&job).unwrap();
    assert_eq!(
        once.annotations().get(contract::INJECTED_ANNOTATION),
        Some(&first.mark)
    );
    let second = mutate_job(&once, &p, &virtual_cluster(), &Settings::default()).unwrap();
    assert!(second.patch.0.is_empty(), "{:?}", second.patch);
    assert_eq!(second.mark, first.mark);

    // A Job whose mark was lost (or altered) is brought back to the same shape, not doubled.
    let mut unmarked = once.clone();
    unmarked
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(contract::INJECTED_ANNOTATION.into(), "other".into());
    let third = mutate_job(&unmarked, &p, &virtual_cluster(), &Settings::default()).unwrap();
    let twice = third.apply(&unmarked).unwrap();
    assert_eq!(
        serde_json::to_value(&twice).unwrap(),
        serde_json::to_value(&once).unwrap()
    );
}

#[test]
fn the_mark_follows_the_injection() {
    let a = yaml_plugin(pv("store:/pv"));
    let b = yaml_plugin(pv("store:/pv/other"));
    let mark = |p: &VirtualClusterPlugin| {
        mutate_job(
            &bare_job(p, Action::Install),
            p,
            &virtual_cluster(),
            &Settings::default(),
        )
        .unwrap()
        .mark
    };
    assert_ne!(mark(&a), mark(&b));
    assert_eq!(mark(&a), mark(&a.clone()));
}

#[test]
fn contract_violations_are_denied_naming_the_job_and_field() {
    let p = yaml_plugin(pv("store:/pv"));
    let vc = virtual_cluster();
    let s = Settings::default();
    let job_name = bare_job(&p, Action::Install).name_any();
    type Change = Box<dyn Fn(&mut Job)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "annotation plugin.kosmos.io/spec-hash is stale",
            Box::new(|j: &mut Job| {
                j.metadata
                    .annotations
                    .as_mut()
                    .unwrap()
                    .insert(contract::SPEC_HASH_ANNOTATION.into(), "stale".into());
            }),
        ),
        (
            "annotation plugin.kosmos.io/kubeconfig-secret is missing",
            Box::new(|j: &mut Job| {
                j.metadata
                    .annotations
                    .as_mut()
                    .unwrap()
                    .remove(contract::KUBECONFIG_SECRET_ANNOTATION);
            }),
        ),
        (
            "label plugin.kosmos.io/action is \"delete\"",
            Box::new(|j: &mut Job| {
                j.metadata
                    .labels
                    .as_mut()
                    .unwrap()
                    .insert(contract::ACTION_LABEL.into(), "delete".into());
            }),
        ),
        (
            "label plugin.kosmos.io/plugin does not name",
            Box::new(|j: &mut Job| {
                j.metadata
                    .labels
                    .as_mut()
                    .unwrap()
                    .insert(contract::PLUGIN_LABEL.into(), "another".into());
            }),
        ),
        (
            "has no container named executor",
            Box::new(|j: &mut Job| {
                let spec = j.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
                spec.containers[0].name = "main".into();
            }),
        ),
    ];
    for (expected, change) in cases {
        let mut job = bare_job(&p, Action::Install);
        change(&mut job);
        let message = mutate_job(&job, &p, &vc, &s).unwrap_err().0;
        assert!(
            message.contains(&format!("Job tenants/{job_name}")) && message.contains(expected),
            "{expected}: {message}"
        );
    }
}

#[test]
fn a_stale_spec_hash_is_denied_without_echoing_the_current_one() {
    let p = yaml_plugin(pv("store:/pv/x.yaml"));
    let mut job = bare_job(&p, Action::Install);
    job.metadata.annotations.as_mut().unwrap().insert(
        contract::SPEC_HASH_ANNOTATION.into(),
        "0123456789abcdef".into(),
    );
    let message = mutate_job(&job, &p, &virtual_cluster(), &Settings::default())
        .unwrap_err()
        .0;
    assert!(
        message.contains(contract::SPEC_HASH_ANNOTATION) && message.contains("older spec"),
        "{message}"
    );
    let current = contract::spec_hash(&p.spec);
    assert!(!message.contains(&current), "{message} reveals {current}");
}

#[test]
fn an_invalid_plugin_is_denied_with_its_field() {
    let p = plugin(
        "broken",
        VirtualClusterPluginSpec {
            plugin_sources: PluginSources {
                yaml: Some(YamlSource {
                    path: uri("ftp://example.com/x.yaml", None),
                    namespace: None,
                }),
                chart: None,
            },
            ..Default::default()
        },
    );
    let message = deny(&p, &Settings::default());
    assert!(
        message.contains("VirtualClusterPlugin tenants/broken")
            && message.contains("spec.pluginSources.yaml.path.uri"),
        "{message}"
    );
}

#[test]
fn chart_arguments_that_helm_would_read_as_flags_are_denied() {
    let chart = |name: &str, release: Option<&str>, namespace: Option<&str>| {
        plugin(
            "flags",
            VirtualClusterPluginSpec {
                plugin_sources: PluginSources {
                    chart: Some(ChartSource {
                        name: Some(name.into()),
                        repo: Some("https://charts.example.com".into()),
                        release_name: release.map(Into::into),
                        namespace: namespace.map(Into::into),
                        ..Default::default()
                    }),
                    yaml: None,
                },
                ..Default::default()
            },
        )
    };
    for (p, field) in [
        (
            chart("--post-renderer=/bin/sh", None, None),
            "spec.pluginSources.chart.name",
        ),
        (chart("-h", None, None), "spec.pluginSources.chart.name"),
        (
            chart("nginx", Some("--debug"), None),
            "spec.pluginSources.chart.releaseName",
        ),
        (
            chart("nginx", None, Some("-n")),
            "spec.pluginSources.chart.namespace",
        ),
    ] {
        let message = deny(&p, &Settings::default());
        assert!(message.contains(field), "{field}: {message}");
    }
}

#[test]
fn oversized_inline_values_are_denied() {
    let p = plugin(
        "big",
        VirtualClusterPluginSpec {
            plugin_sources: PluginSources {
                chart: Some(ChartSource {
                    storage: Some(pv("store:/pv/chart")),
                    values: Some(format!("key: {}\n", "x".repeat(MAX_INLINE_VALUES_BYTES))),
                    ..Default::default()
                }),
                yaml: None,
            },
            ..Default::default()
        },
    );
    let message = deny(&p, &Settings::default());
    assert!(
        message.contains("spec.pluginSources.chart.values") && message.contains("valuesFile"),
        "{message}"
    );
}

/// Strings that would run a command if any of them were pasted into a shell line.
const HOSTILE: &[&str] = &[
    "$(touch /tmp/pwned)",
    "`touch /tmp/pwned`",
    "x;touch${IFS}/tmp/pwned",
    "x'\"|&&touch${IFS}/tmp/pwned",
];

#[test]
fn shell_injection_in_every_string_field_stays_inside_env_values() {
    for (i, evil) in HOSTILE.iter().enumerate() {
        let compact = evil.replace(' ', "");
        let p = plugin(
            &format!("hostile-{i}"),
            VirtualClusterPluginSpec {
                plugin_sources: PluginSources {
                    chart: Some(ChartSource {
                        // A chart name of this form is refused by the validation (see
                        // tests/executor_script.rs for the whole corpus, names included).
                        name: Some("demo".into()),
                        repo: Some(format!("https://example.com/{compact}")),
                        version: Some(compact.clone()),
                        values: Some(format!("key: '{}'\n", evil.replace('\'', "''"))),
                        values_file: Some(pv(&format!("store:/pv/{compact}"))),
                        ..Default::default()
                    }),
                    yaml: Some(YamlSource {
                        path: host(&format!("/data/{compact}"), None),
                        namespace: None,
                    }),
                },
                success_state_command: Some("true".into()),
                ..Default::default()
            },
        );
        let job = mutated(&p, Action::Install);
        let container = &pod(&job).containers[0];
        assert_eq!(
            container.command.as_deref().unwrap(),
            ["/bin/sh", "-c", EXECUTOR_SCRIPT],
            "the command is the constant script, whatever the plugin says"
        );
        assert!(container.args.is_none());
        assert!(!EXECUTOR_SCRIPT.contains("pwned"));
        let env = env_of(&job);
        for key in ["CHART_REPO", "CHART_VERSION", "CHART_VALUES"] {
            assert!(
                env[key].contains("pwned"),
                "{key} carries the value as data"
            );
        }
        assert!(env["VALUES_PATH"].contains("pwned") && env["YAML_PATH"] == "/kosmos/host/0");
        // Nowhere else in the pod spec: not in the command, not in names or mount paths.
        let mut pod_json = serde_json::to_value(pod(&job)).unwrap();
        pod_json["containers"][0]["env"] = Value::Null;
        let host_path = pod_json["volumes"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|v| v["hostPath"].is_object())
            .unwrap();
        // The hostPath volume's own path is data for the kubelet, not for a shell.
        host_path["hostPath"]["path"] = Value::Null;
        assert!(!pod_json.to_string().contains("pwned"), "{pod_json}");
    }
}

#[test]
fn shell_injection_in_uris_and_stored_chart_paths_stays_inside_env_values() {
    for evil in HOSTILE {
        let compact = evil.replace(' ', "");
        let p = plugin(
            "hostile-uri",
            VirtualClusterPluginSpec {
                plugin_sources: PluginSources {
                    chart: Some(ChartSource {
                        storage: Some(pv(&format!("store:/pv/{compact}"))),
                        values_file: Some(uri(&format!("https://example.com/{compact}"), None)),
                        ..Default::default()
                    }),
                    yaml: Some(YamlSource {
                        path: uri(&format!("https://example.com/{compact}.tgz"), None),
                        namespace: None,
                    }),
                },
                ..Default::default()
            },
        );
        for action in [Action::Install, Action::Uninstall] {
            let job = mutated(&p, action);
            let container = &pod(&job).containers[0];
            assert_eq!(
                container.command.as_deref().unwrap(),
                ["/bin/sh", "-c", EXECUTOR_SCRIPT]
            );
            let env = env_of(&job);
            assert!(env["CHART_PATH"].contains("pwned") && env["YAML_URI"].contains("pwned"));
            // Download targets are fixed names the webhook chose, never taken from the URL.
            assert!(!env["YAML_DOWNLOAD"].contains("pwned") && !env["YAML_PATH"].contains("pwned"));
            let mut pod_json = serde_json::to_value(pod(&job)).unwrap();
            pod_json["containers"][0]["env"] = Value::Null;
            assert!(!pod_json.to_string().contains("pwned"), "{pod_json}");
        }
    }
}

/// The Pod spec a user gets for a seed example, with the script elided (it is the constant
/// [`EXECUTOR_SCRIPT`], checked by other tests) so the snapshot shows what is specific.
fn pod_snapshot(plugin: &VirtualClusterPlugin) -> Value {
    let job = mutated(plugin, Action::Install);
    let mut spec = serde_json::to_value(pod(&job)).unwrap();
    spec["containers"][0]["command"][2] = json!("<executor.sh>");
    let meta = job
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .clone()
        .unwrap();
    // The mark is a hash that changes with the script; that it is set is what matters here.
    let mark = &meta.annotations.unwrap()[contract::INJECTED_ANNOTATION];
    assert_eq!(mark.len(), 16);
    json!({"templateAnnotations": {contract::INJECTED_ANNOTATION: "<mark>"}, "podSpec": spec})
}

fn seed_plugin(file: &str) -> VirtualClusterPlugin {
    let path = format!(
        "{}/../api/testdata/valid/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let mut p: VirtualClusterPlugin = serde_yaml::from_str(&text).unwrap();
    p.metadata.namespace = Some(NAMESPACE.into());
    p
}

#[test]
fn snapshot_seed_apiserver_network_proxy() {
    insta::assert_yaml_snapshot!(pod_snapshot(&seed_plugin("apiserver-network-proxy.yaml")));
}

#[test]
fn snapshot_seed_field_list_corrected() {
    insta::assert_yaml_snapshot!(pod_snapshot(&seed_plugin("field-list-corrected.yaml")));
}

/// The shipped script is `src/executor.sh` without its comment and blank lines (`build.rs`).
/// Bash prints a function from its parse tree, without comments or layout, so the source and
/// the shipped script wrapped in one must print the same: a line dropped from inside a quoted
/// string or a here-document would show.
#[test]
fn the_shipped_executor_script_parses_as_the_source_does() {
    let source = include_str!("../executor.sh");
    let parsed = |script: &str| {
        let out = std::process::Command::new("bash")
            .args([
                "-c",
                "eval \"shipped() {\n${SCRIPT}\n}\" && declare -f shipped",
            ])
            .env("SCRIPT", script)
            .output()
            .unwrap_or_else(|e| panic!("bash cannot run ({e})"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let shipped = parsed(EXECUTOR_SCRIPT);
    assert!(
        shipped.contains("finish ()") && shipped.lines().count() > 100,
        "bash printed the whole script as one function:\n{shipped}"
    );
    assert_eq!(parsed(source), shipped);
    assert!(
        EXECUTOR_SCRIPT.len() < source.len()
            && !EXECUTOR_SCRIPT
                .lines()
                .any(|line| line.trim().is_empty() || line.trim_start().starts_with('#')),
        "the comments and blank lines are gone"
    );
}

#[test]
fn executor_script_passes_shellcheck_as_posix_sh() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/src/executor.sh");
    // No silent pass without shellcheck: the test fails and says how to get it.
    let out = std::process::Command::new("shellcheck")
        .args(["-s", "sh", script])
        .output()
        .unwrap_or_else(|e| {
            panic!("shellcheck cannot run ({e}): apt-get install shellcheck (.ci/run installs it)")
        });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The mark hashes `injection_json` and the answer carries `patch_json`: both must be exactly
/// what serde_json writes (a mark already on a Job must keep matching; a patch must parse).
#[test]
fn the_pre_escaped_script_gives_the_bytes_serde_gives() {
    let plugins = [
        yaml_plugin(pv("store:/pv")),
        yaml_plugin(host("/data/x.yaml", Some("node-1"))),
        yaml_plugin(uri("https://example.com/m.yaml", Some(&"a".repeat(64)))),
    ];
    for p in &plugins {
        for action in [Action::Install, Action::Uninstall] {
            let injection =
                build_injection(p, &virtual_cluster(), "kc", action, &any_host_path()).unwrap();
            let json = serde_json::to_vec(&injection).unwrap();
            assert_eq!(injection_json(&injection), json);
            // Computed, then kept: the same mark both times.
            for _ in 0..2 {
                assert_eq!(mark_of(&injection), contract::short_hash(&[&json], 16));
            }
            let m = mutate_job(
                &bare_job(p, action),
                p,
                &virtual_cluster(),
                &any_host_path(),
            )
            .unwrap();
            assert_eq!(
                m.patch_json().unwrap(),
                serde_json::to_vec(&m.patch).unwrap()
            );
        }
    }
}

/// The patch is built from the fields the mutation writes, not by diffing whole Jobs; a Job that
/// already holds volumes, variables, arguments, an affinity and pod annotations of its own keeps
/// them, gets ours replaced in place or added, and its arguments removed. (In debug builds every
/// mutation also checks its patch against a diff of the two whole Jobs.)
#[test]
fn the_patch_keeps_what_the_job_had_and_replaces_only_our_items() {
    let p = yaml_plugin(host("/data/x.yaml", Some("node-1")));
    let mut job = bare_job(&p, Action::Install);
    let template = &mut job.spec.as_mut().unwrap().template;
    template
        .metadata
        .get_or_insert_with(Default::default)
        .annotations = Some([("team".to_owned(), "a".to_owned())].into());
    let pod = template.spec.as_mut().unwrap();
    pod.volumes = Some(vec![
        serde_json::from_value(json!({"name": "theirs", "emptyDir": {}})).unwrap(),
        serde_json::from_value(json!({"name": "kosmos-work", "configMap": {"name": "x"}})).unwrap(),
    ]);
    pod.affinity = Some(
        serde_json::from_value(json!({"podAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1,
                "podAffinityTerm": {"topologyKey": "zone"}}]}}))
        .unwrap(),
    );
    let container = &mut pod.containers[0];
    container.args = Some(vec!["--old".into()]);
    container.env = Some(vec![
        EnvVar {
            name: "THEIRS".into(),
            value: Some("1".into()),
            value_from: None,
        },
        EnvVar {
            name: env::HOME.into(),
            value: Some("/elsewhere".into()),
            value_from: None,
        },
    ]);
    let m = mutate_job(&job, &p, &virtual_cluster(), &any_host_path()).unwrap();
    let ops = serde_json::to_value(&m.patch).unwrap();
    let paths: Vec<&str> = ops
        .as_array()
        .unwrap()
        .iter()
        .map(|op| op["path"].as_str().unwrap())
        .collect();
    // Item by item: ours replaced where the name was taken, the rest appended.
    assert!(
        paths.contains(&"/spec/template/spec/volumes/1"),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"/spec/template/spec/volumes/-"),
        "{paths:?}"
    );
    assert!(!paths.contains(&"/spec/template/spec/volumes"), "{paths:?}");
    assert!(
        paths.contains(&"/spec/template/spec/affinity/nodeAffinity"),
        "{paths:?}"
    );
    let out = m.apply(&job).unwrap();
    let pod = out.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let volumes: Vec<&str> = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(volumes[0], "theirs");
    assert_eq!(volumes[1], "kosmos-work");
    assert!(pod.volumes.as_ref().unwrap()[1].empty_dir.is_some());
    let affinity = pod.affinity.as_ref().unwrap();
    assert!(affinity.pod_affinity.is_some());
    assert!(affinity.node_affinity.is_some());
    let container = &pod.containers[0];
    assert_eq!(container.args, None);
    let env = env_of(&out);
    assert_eq!(env["THEIRS"], "1");
    assert_eq!(env[env::HOME], format!("{WORK_DIR}/home"));
    assert_eq!(
        out.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()["team"],
        "a"
    );
}

/// With a key, `mutate` skips the unsigned mark (it is overwritten): that is only sound while the
/// signature leaves the mark annotation out, and the signed mark is the same either way.
#[test]
fn the_signed_mark_does_not_depend_on_the_unsigned_one() {
    use kosmos_api::mark;
    let p = yaml_plugin(pv("store:/pv"));
    let job = bare_job(&p, Action::Install);
    let key = || std::sync::Arc::new(mark::Key::new(&[7u8; mark::KEY_BYTES]).unwrap());
    let settings = Settings {
        mark_key: Some(key()),
        ..Settings::default()
    };
    let signed = mutate_job(&job, &p, &virtual_cluster(), &settings).unwrap();
    let unsigned = mutate_job(&job, &p, &virtual_cluster(), &Settings::default()).unwrap();
    let mut with_unsigned = unsigned.apply(&job).unwrap();
    assert_eq!(mark::sign(&key(), &with_unsigned), signed.mark);
    set_mark(&mut with_unsigned, &signed.mark);
    assert_eq!(
        serde_json::to_value(&with_unsigned).unwrap(),
        serde_json::to_value(signed.apply(&job).unwrap()).unwrap()
    );
    let verifying = mark::Key::new(&[7u8; mark::KEY_BYTES]).unwrap();
    assert_eq!(mark::verify(&[verifying], &with_unsigned), Ok(()));
}
