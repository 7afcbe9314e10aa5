//! The JSON patch from a Job to the same Job after [`super::apply`], built from the fields
//! `apply` writes. Serialising both whole Jobs into JSON trees and diffing them was most of a
//! review's cost (a Job is a few hundred JSON nodes, the executor script alone 5 KB); here only
//! what changed is serialised. `apply` stays the one statement of what the mutation does; in
//! debug builds (every test) the patch is checked against a diff of the two whole Jobs.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::PodSpec;
use serde::Serialize;

/// The patch that turns `before` into `after`, where `after` is `before` with
/// [`super::apply`] done and `container` the index of the executor container.
pub(super) fn between(before: &Job, after: &Job, container: usize) -> Result<Patch, String> {
    let mut ops = Ops::default();
    ops.map(
        &["metadata", "annotations"],
        before.metadata.annotations.as_ref(),
        after.metadata.annotations.as_ref(),
    )?;
    let (Some(before_spec), Some(after_spec)) = (&before.spec, &after.spec) else {
        return Err("spec is missing".to_owned());
    };
    let (bt, at) = (&before_spec.template, &after_spec.template);
    match (&bt.metadata, &at.metadata) {
        (Some(b), Some(a)) => ops.map(
            &["spec", "template", "metadata", "annotations"],
            b.annotations.as_ref(),
            a.annotations.as_ref(),
        )?,
        (b, a) => ops.field(&["spec", "template", "metadata"], b.as_ref(), a.as_ref())?,
    }
    let (Some(bp), Some(ap)) = (&bt.spec, &at.spec) else {
        return Err("spec.template.spec is missing".to_owned());
    };
    pod(&mut ops, bp, ap)?;
    let (Some(bc), Some(ac)) = (bp.containers.get(container), ap.containers.get(container)) else {
        return Err(format!(
            "spec.template.spec.containers has no container at index {container}"
        ));
    };
    let index = container.to_string();
    let at = |field: &'static str| ["spec", "template", "spec", "containers", &index, field];
    ops.field(&at("command"), bc.command.as_ref(), ac.command.as_ref())?;
    ops.field(&at("args"), bc.args.as_ref(), ac.args.as_ref())?;
    ops.list(&at("env"), bc.env.as_ref(), ac.env.as_ref())?;
    ops.list(
        &at("volumeMounts"),
        bc.volume_mounts.as_ref(),
        ac.volume_mounts.as_ref(),
    )?;
    let patch = Patch(ops.0);
    #[cfg(debug_assertions)]
    check(before, after, &patch);
    Ok(patch)
}

/// The pod-level fields `apply` writes.
fn pod(ops: &mut Ops, before: &PodSpec, after: &PodSpec) -> Result<(), String> {
    const POD: [&str; 3] = ["spec", "template", "spec"];
    let at = |field: &'static str| [POD[0], POD[1], POD[2], field];
    ops.list(
        &at("volumes"),
        before.volumes.as_ref(),
        after.volumes.as_ref(),
    )?;
    ops.field(
        &at("automountServiceAccountToken"),
        before.automount_service_account_token.as_ref(),
        after.automount_service_account_token.as_ref(),
    )?;
    // Only the node affinity's required terms are written; the rest of an affinity is kept as
    // the apiserver sent it (fields this crate's Job type does not know included).
    match (before.affinity.as_ref(), after.affinity.as_ref()) {
        (Some(b), Some(a)) => match (b.node_affinity.as_ref(), a.node_affinity.as_ref()) {
            (Some(b), Some(a)) => ops.field(
                &[
                    POD[0],
                    POD[1],
                    POD[2],
                    "affinity",
                    "nodeAffinity",
                    "requiredDuringSchedulingIgnoredDuringExecution",
                ],
                b.required_during_scheduling_ignored_during_execution
                    .as_ref(),
                a.required_during_scheduling_ignored_during_execution
                    .as_ref(),
            )?,
            (b, a) => ops.field(&[POD[0], POD[1], POD[2], "affinity", "nodeAffinity"], b, a)?,
        },
        (b, a) => ops.field(&at("affinity"), b, a)?,
    }
    Ok(())
}

#[derive(Default)]
struct Ops(Vec<PatchOperation>);

impl Ops {
    fn add(&mut self, path: PointerBuf, value: &impl Serialize) -> Result<(), String> {
        let value = serde_json::to_value(value).map_err(|e| format!("{path}: {e}"))?;
        self.0
            .push(PatchOperation::Add(AddOperation { path, value }));
        Ok(())
    }

    /// A field set, changed or removed.
    fn field<T: Serialize + PartialEq>(
        &mut self,
        path: &[&str],
        before: Option<&T>,
        after: Option<&T>,
    ) -> Result<(), String> {
        if before == after {
            return Ok(());
        }
        let path = PointerBuf::from_tokens(path.iter().copied());
        match after {
            // `add` of an object member that exists replaces it.
            Some(value) => self.add(path, value),
            None => {
                self.0
                    .push(PatchOperation::Remove(RemoveOperation { path }));
                Ok(())
            }
        }
    }

    /// A map whose entries are set, changed or removed one by one.
    fn map<V: Serialize + PartialEq>(
        &mut self,
        path: &[&str],
        before: Option<&BTreeMap<String, V>>,
        after: Option<&BTreeMap<String, V>>,
    ) -> Result<(), String> {
        let (Some(before), Some(after)) = (before, after) else {
            return self.field(path, before, after);
        };
        let mut path = PointerBuf::from_tokens(path.iter().copied());
        for key in before.keys().filter(|k| !after.contains_key(*k)) {
            path.push_back(key.as_str());
            self.0.push(PatchOperation::Remove(RemoveOperation {
                path: path.clone(),
            }));
            path.pop_back();
        }
        for (key, value) in after {
            if before.get(key) != Some(value) {
                path.push_back(key.as_str());
                self.add(path.clone(), value)?;
                path.pop_back();
            }
        }
        Ok(())
    }

    /// A list `apply` upserts into: items replaced in place, new ones appended. A list that
    /// shrank (which `apply` never does) is written whole.
    fn list<T: Serialize + PartialEq>(
        &mut self,
        path: &[&str],
        before: Option<&Vec<T>>,
        after: Option<&Vec<T>>,
    ) -> Result<(), String> {
        let (Some(before), Some(after)) = (before, after) else {
            return self.field(path, before, after);
        };
        if after.len() < before.len() {
            return self.add(PointerBuf::from_tokens(path.iter().copied()), after);
        }
        let mut path = PointerBuf::from_tokens(path.iter().copied());
        for (i, (b, a)) in before.iter().zip(after).enumerate() {
            if b != a {
                path.push_back(i);
                let value = serde_json::to_value(a).map_err(|e| format!("{path}: {e}"))?;
                self.0.push(PatchOperation::Replace(ReplaceOperation {
                    path: path.clone(),
                    value,
                }));
                path.pop_back();
            }
        }
        path.push_back("-");
        for item in after.iter().skip(before.len()) {
            self.add(path.clone(), item)?;
        }
        Ok(())
    }
}

/// Debug builds: the patch applied to `before` gives exactly `after`, as a diff of the two
/// whole Jobs would; a field `apply` writes but [`between`] misses fails every test at once.
#[cfg(debug_assertions)]
fn check(before: &Job, after: &Job, patch: &Patch) {
    let (Ok(mut patched), Ok(want)) = (serde_json::to_value(before), serde_json::to_value(after))
    else {
        return;
    };
    let applied = json_patch::patch(&mut patched, patch);
    assert!(
        applied.is_ok() && patched == want,
        "the patch does not turn the Job into the mutated Job: {applied:?}\npatch: {patch}\nwant: {want}\ngot: {patched}"
    );
}
