//! Per-cluster parameters: the VirtualCluster's `spec.pluginOptions` and what every install
//! knows about its cluster, handed to the executor, which gives them to Helm as values under
//! `kosmos` and to a kustomization as ConfigMaps in `kosmos-options.yaml`.
//!
//! A literal option travels as environment variables `PLUGIN_OPTION_<i>_NAME` and `_VALUE`. An
//! option with `valueFrom` travels as a read-only Secret or ConfigMap volume holding just that
//! key, and `PLUGIN_OPTION_<i>_FILE` names the file: its content never passes through the
//! webhook, the Job or a log. The volume is optional, so a missing Secret or key does not leave
//! the pod stuck: the executor sees the file missing and fails naming the option and its source.

use k8s_openapi::api::core::v1::{ConfigMapVolumeSource, KeyToPath, SecretVolumeSource, Volume};
use kosmos_api::VirtualCluster;
use kube::ResourceExt;

use super::{Builder, RecursiveReadOnly};
use crate::executor_env::{self as env, OptionPart};

/// Parent of the option volumes: `<OPTIONS_DIR>/<i>/value` is option `i`'s value.
pub const OPTIONS_DIR: &str = "/kosmos/options";

/// Adds the options of `virtual_cluster` (already validated) to the injection.
pub(super) fn inject(b: &mut Builder, virtual_cluster: &VirtualCluster) {
    b.env(
        env::VIRTUAL_CLUSTER_NAMESPACE,
        virtual_cluster.namespace().unwrap_or_default(),
    );
    let options = virtual_cluster.spec.options();
    b.env(env::PLUGIN_OPTION_COUNT, options.len().to_string());
    for (i, option) in options.iter().enumerate() {
        b.env(env::plugin_option(i, OptionPart::Name), option.name.clone());
        if let Some(value) = &option.value {
            b.env(env::plugin_option(i, OptionPart::Value), value.clone());
            continue;
        }
        let Some(from) = &option.value_from else {
            continue;
        };
        let items = |key: &str| {
            Some(vec![KeyToPath {
                key: key.to_owned(),
                path: "value".to_owned(),
                mode: None,
            }])
        };
        let name = format!("kosmos-option-{i}");
        let volume = match (&from.secret_key_ref, &from.config_map_key_ref) {
            (Some(r), _) => Volume {
                name,
                secret: Some(SecretVolumeSource {
                    secret_name: Some(r.name.clone()),
                    items: items(&r.key),
                    optional: Some(true),
                    default_mode: None,
                }),
                ..Volume::default()
            },
            (None, Some(r)) => Volume {
                name,
                config_map: Some(ConfigMapVolumeSource {
                    name: r.name.clone(),
                    items: items(&r.key),
                    optional: Some(true),
                    default_mode: None,
                }),
                ..Volume::default()
            },
            (None, None) => continue,
        };
        let dir = format!("{OPTIONS_DIR}/{i}");
        // A Secret or ConfigMap volume has nothing mounted below it.
        b.volume(volume, dir.clone(), RecursiveReadOnly::Disabled);
        b.env(
            env::plugin_option(i, OptionPart::File),
            format!("{dir}/value"),
        );
        b.env(env::plugin_option(i, OptionPart::Source), from.describe());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use k8s_openapi::api::core::v1::PodSpec;
    use kosmos_api::contract::Action;
    use kosmos_api::{
        KeyRef, OptionValueSource, PluginOption, PluginSources, Storage, VirtualClusterPluginSpec,
        YamlSource,
    };

    use super::*;
    use crate::mutation::tests::{plugin, virtual_cluster};
    use crate::mutation::{Settings, mutate_job};

    fn from(secret: bool, name: &str, key: &str) -> Option<OptionValueSource> {
        let r = Some(KeyRef {
            name: name.into(),
            key: key.into(),
        });
        Some(if secret {
            OptionValueSource {
                secret_key_ref: r,
                config_map_key_ref: None,
            }
        } else {
            OptionValueSource {
                secret_key_ref: None,
                config_map_key_ref: r,
            }
        })
    }

    fn pod_for(options: Vec<PluginOption>) -> Result<PodSpec, String> {
        let p = plugin(
            "opts",
            VirtualClusterPluginSpec {
                plugin_sources: PluginSources {
                    yaml: Some(YamlSource {
                        path: Storage {
                            uri: Some("https://example.com/x.yaml".into()),
                            ..Storage::default()
                        },
                        namespace: None,
                    }),
                    chart: None,
                },
                ..VirtualClusterPluginSpec::default()
            },
        );
        let mut vc = virtual_cluster();
        vc.spec.plugin_options = Some(options);
        let job = crate::authoring::bare_job(
            &p,
            &vc,
            Action::Install,
            crate::authoring::DEFAULT_EXECUTOR_IMAGE,
        );
        let mutation = mutate_job(&job, &p, &vc, &Settings::default()).map_err(|d| d.0)?;
        let job = mutation.apply(&job).unwrap();
        Ok(job.spec.unwrap().template.spec.unwrap())
    }

    #[test]
    fn literal_options_are_environment_and_referenced_ones_optional_volumes() {
        let pod = pod_for(vec![
            PluginOption {
                name: "dnsIP".into(),
                value: Some("10.96.0.10".into()),
                value_from: None,
            },
            PluginOption {
                name: "password".into(),
                value: None,
                value_from: from(true, "db", "password"),
            },
            PluginOption {
                name: "ca".into(),
                value: None,
                value_from: from(false, "ca-bundle", "ca.crt"),
            },
        ])
        .unwrap();
        let container = &pod.containers[0];
        let env: Vec<(String, String)> = container
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .filter(|(n, _)| n.starts_with("PLUGIN_OPTION") || n == env::VIRTUAL_CLUSTER_NAMESPACE)
            .collect();
        let expected: Vec<(String, String)> = [
            ("VIRTUAL_CLUSTER_NAMESPACE", "tenants"),
            ("PLUGIN_OPTION_COUNT", "3"),
            ("PLUGIN_OPTION_0_NAME", "dnsIP"),
            ("PLUGIN_OPTION_0_VALUE", "10.96.0.10"),
            ("PLUGIN_OPTION_1_NAME", "password"),
            ("PLUGIN_OPTION_1_FILE", "/kosmos/options/1/value"),
            ("PLUGIN_OPTION_1_SOURCE", "Secret db key password"),
            ("PLUGIN_OPTION_2_NAME", "ca"),
            ("PLUGIN_OPTION_2_FILE", "/kosmos/options/2/value"),
            ("PLUGIN_OPTION_2_SOURCE", "ConfigMap ca-bundle key ca.crt"),
        ]
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
        assert_eq!(env, expected);
        // No value from a Secret is in the pod spec: only the reference.
        assert!(
            !container
                .env
                .iter()
                .flatten()
                .any(|e| e.value_from.is_some())
        );
        let volumes = pod.volumes.unwrap();
        let secret = volumes
            .iter()
            .find(|v| v.name == "kosmos-option-1")
            .and_then(|v| v.secret.clone())
            .unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("db"));
        assert_eq!(secret.optional, Some(true));
        let items = secret.items.unwrap();
        assert_eq!(
            (items[0].key.as_str(), items[0].path.as_str()),
            ("password", "value")
        );
        let cm = volumes
            .iter()
            .find(|v| v.name == "kosmos-option-2")
            .and_then(|v| v.config_map.clone())
            .unwrap();
        assert_eq!(cm.name, "ca-bundle");
        let mount = container
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "kosmos-option-1")
            .unwrap();
        assert_eq!(mount.mount_path, "/kosmos/options/1");
        assert_eq!(mount.read_only, Some(true));
    }

    #[test]
    fn options_from_a_looser_crd_are_denied_naming_the_field() {
        let denial = pod_for(vec![PluginOption {
            name: "a.b".into(),
            value: Some("x".into()),
            value_from: None,
        }])
        .unwrap_err();
        assert_eq!(
            denial,
            "VirtualCluster tenants/tenant1-cluster is invalid: spec.pluginOptions[0].name: name \
             must start with a letter and hold only letters, digits, '_' and '-'"
        );
    }
}
