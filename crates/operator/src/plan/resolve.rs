//! Which plugins make up the set and in what order they install: [`resolve`].

use std::collections::{BTreeMap, BTreeSet};

use kosmos_api::{VirtualCluster, VirtualClusterPlugin, condition, validate_plugin};
use kube::ResourceExt as _;

use super::Problem;

/// The plugins to install, in an order where every plugin comes after its dependencies (ties
/// by name), or every problem found.
pub fn resolve<'p>(
    vc: &VirtualCluster,
    plugins: &'p [VirtualClusterPlugin],
) -> Result<Vec<&'p VirtualClusterPlugin>, Vec<Problem>> {
    let by_name: BTreeMap<&str, &VirtualClusterPlugin> = plugins
        .iter()
        .filter_map(|p| p.metadata.name.as_deref().map(|n| (n, p)))
        .collect();
    let set = vc.spec.plugin_set.clone().unwrap_or_default();
    let disabled: BTreeSet<&str> = set.disabled.iter().map(|r| r.name.as_str()).collect();
    let mut problems = Vec::new();
    let mut wanted: BTreeSet<&str> = by_name
        .iter()
        .filter(|(_, p)| p.spec.enabled_by_default)
        .map(|(n, _)| *n)
        .collect();
    for r in &set.enabled {
        if disabled.contains(r.name.as_str()) {
            problems.push(Problem::EnabledAndDisabled(r.name.clone()));
        } else if by_name.contains_key(r.name.as_str()) {
            wanted.insert(r.name.as_str());
        } else {
            problems.push(Problem::NotFound(r.name.clone()));
        }
    }
    wanted.retain(|n| !disabled.contains(n));
    for name in &wanted {
        let Some(plugin) = by_name.get(name) else {
            continue;
        };
        if let Err(invalid) = validate_plugin(plugin) {
            problems.push(Problem::Invalid(invalid.to_string()));
        }
        for dep in &plugin.spec.depends_on {
            if !by_name.contains_key(dep.name.as_str()) {
                problems.push(Problem::DependencyNotFound {
                    plugin: (*name).to_owned(),
                    dependency: dep.name.clone(),
                });
            } else if !wanted.contains(dep.name.as_str()) {
                problems.push(Problem::DependencyNotInSet {
                    plugin: (*name).to_owned(),
                    dependency: dep.name.clone(),
                });
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    // Kahn's algorithm over the wanted plugins; the BTreeSet keeps ties in name order so the
    // order (and the status list) is the same every time.
    let deps = |n: &str| -> BTreeSet<&str> {
        by_name
            .get(n)
            .map(|p| p.spec.depends_on.iter().map(|d| d.name.as_str()).collect())
            .unwrap_or_default()
    };
    let mut remaining: BTreeMap<&str, BTreeSet<&str>> =
        wanted.iter().map(|n| (*n, deps(n))).collect();
    let mut order = Vec::new();
    loop {
        let ready: Vec<&str> = remaining
            .iter()
            .filter(|(_, d)| d.is_empty())
            .map(|(n, _)| *n)
            .collect();
        if ready.is_empty() {
            break;
        }
        for name in ready {
            remaining.remove(name);
            for d in remaining.values_mut() {
                d.remove(name);
            }
            if let Some(p) = by_name.get(name) {
                order.push(*p);
            }
        }
    }
    if !remaining.is_empty() {
        return Err(vec![Problem::Cycle(
            remaining.keys().map(|n| (*n).to_owned()).collect(),
        )]);
    }
    Ok(order)
}

/// Whether a change to `plugin` (created, edited or deleted) may change what [`resolve`] or the
/// plan decides for `vc`, so that a plugin edit wakes only the VirtualClusters that use it
/// instead of every one of its namespace: those that name it in their set (enabled or
/// disabled), those whose status lists it (installed, installing or uninstalling: an edit
/// reinstalls, a deletion is reported), every one when it is enabled by default, and those
/// whose set did not resolve or was never resolved (the plugin may be the missing one, or a
/// missing dependency). A plugin's dependencies are in the set of every VirtualCluster that
/// resolved with it, so they are in its status too.
pub fn concerns(vc: &VirtualCluster, plugin: &VirtualClusterPlugin) -> bool {
    if vc.namespace() != plugin.namespace() {
        return false;
    }
    if plugin.spec.enabled_by_default {
        return true;
    }
    let name = plugin.name_any();
    let named = vc.spec.plugin_set.as_ref().is_some_and(|set| {
        set.enabled
            .iter()
            .chain(&set.disabled)
            .any(|r| r.name == name)
    });
    let status = vc.status.as_ref();
    let listed = status.is_some_and(|s| s.plugins.iter().any(|p| p.name == name));
    let resolved = status.is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == condition::PLUGINS_RESOLVED && c.status == "True")
    });
    named || listed || !resolved
}
