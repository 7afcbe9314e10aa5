//! What wakes a VirtualCluster: only changes the reconciler can act on.
//!
//! Every reconciliation reads the VirtualCluster, its plugins and its Jobs fresh (decisions never
//! rest on a cache), so each wake-up costs the apiserver five requests. Woken by every watch
//! event, a VirtualCluster installing five plugins was reconciled ~9 times: by each Job's status
//! ticking (active, ready, uncounted pods), by the Jobs the reconciler had just created, and by
//! its own status writes (docs/benchmarks.md). The watches here pass on only what a plan reads:
//! for an executor Job its identity, mark, deletion and outcome; for a VirtualCluster everything
//! but the status fields this operator writes itself. A missed event is still covered by the
//! controller's periodic requeue, as before.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use futures::{Stream, StreamExt, future};
use k8s_openapi::api::batch::v1::Job;
use kosmos_api::VirtualCluster;
use kube::Resource;
use kube::runtime::watcher::{self, Event};

/// Which watch events of a kind pass, remembering per object (by uid) the hash of what the
/// reconciler reads of it.
pub struct Changes<K> {
    seen: HashMap<String, u64>,
    /// While the watch lists again: what was seen before, to tell unchanged objects from new ones
    /// and forget those that vanished during the gap.
    before_listing: Option<HashMap<String, u64>>,
    /// The hash of what the reconciler reads.
    read: fn(&K) -> u64,
    /// Whether an object first seen in a live event (not a listing) is news: a Job the
    /// reconciler has just created is not.
    new_is_news: fn(&K) -> bool,
    /// Whether a deleted object wakes its VirtualCluster.
    deletes: bool,
}

impl<K: Resource> Changes<K> {
    /// The object to pass on for `event`, if any.
    pub fn pass(&mut self, event: Event<K>) -> Option<K> {
        match event {
            Event::Init => {
                self.before_listing = Some(std::mem::take(&mut self.seen));
                None
            }
            Event::InitApply(obj) => {
                let key = key(&obj);
                let hash = (self.read)(&obj);
                let before = self
                    .before_listing
                    .as_mut()
                    .and_then(|b| b.remove(&key))
                    .or_else(|| self.seen.get(&key).copied());
                self.seen.insert(key, hash);
                (before != Some(hash)).then_some(obj)
            }
            Event::InitDone => {
                self.before_listing = None;
                None
            }
            Event::Apply(obj) => {
                let key = key(&obj);
                let hash = (self.read)(&obj);
                match self.seen.insert(key, hash) {
                    Some(before) => (before != hash).then_some(obj),
                    None => (self.new_is_news)(&obj).then_some(obj),
                }
            }
            Event::Delete(obj) => {
                self.seen.remove(&key(&obj));
                self.deletes.then_some(obj)
            }
        }
    }

    /// `events` reduced to the objects [`Changes::pass`] passes; errors pass unchanged (the
    /// controller's backoff acts on them).
    pub fn filter<S>(mut self, events: S) -> impl Stream<Item = Result<K, watcher::Error>> + Send
    where
        S: Stream<Item = Result<Event<K>, watcher::Error>> + Send,
        K: Send,
    {
        events.filter_map(move |event| {
            future::ready(match event {
                Ok(event) => self.pass(event).map(Ok),
                Err(e) => Some(Err(e)),
            })
        })
    }
}

fn key<K: Resource>(obj: &K) -> String {
    let meta = obj.meta();
    meta.uid.clone().unwrap_or_else(|| {
        format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default()
        )
    })
}

fn hash_of(value: impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// Executor Jobs: a Job wakes its VirtualCluster when it finishes, fails, is being deleted or
/// deleted, or its labels, annotations (the mark) or owners change. Its status ticking while it
/// runs does not, nor does a running Job appearing (the reconciler that created it already knows).
pub fn executor_jobs() -> Changes<Job> {
    Changes {
        seen: HashMap::new(),
        before_listing: None,
        read: job_read,
        new_is_news: |job| job.metadata.deletion_timestamp.is_some() || !finished(job).is_empty(),
        deletes: true,
    }
}

/// What the reconciler reads of a Job (crate::jobs::job_view, the owner check).
fn job_read(job: &Job) -> u64 {
    let meta = &job.metadata;
    let owners: Vec<_> = meta
        .owner_references
        .iter()
        .flatten()
        .map(|o| &o.uid)
        .collect();
    hash_of((
        &meta.labels,
        &meta.annotations,
        meta.deletion_timestamp.is_some(),
        owners,
        finished(job),
    ))
}

/// How the Job ended, if it did: its true `Complete`/`Failed` conditions (reason, message,
/// time) and its completion time.
fn finished(job: &Job) -> Vec<impl Hash + '_> {
    let status = job.status.as_ref();
    let conditions = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| c.status == "True" && (c.type_ == "Complete" || c.type_ == "Failed"))
        .map(|c| {
            (
                Some(c.type_.as_str()),
                c.reason.as_deref(),
                c.message.as_deref(),
                c.last_transition_time.as_ref().map(|t| t.0.as_second()),
            )
        });
    let completed = status
        .and_then(|s| s.completion_time.as_ref())
        .map(|t| (None, None, None, Some(t.0.as_second())));
    conditions.chain(completed).collect()
}

/// VirtualClusters: everything but the status fields this operator writes (its conditions,
/// plugins, progress, reason and update time) and the finalizers (the reconciler that adds its
/// own goes on with the patched object) wakes one, so its own writes do not; the phase does,
/// whoever writes it.
pub fn virtual_clusters() -> Changes<VirtualCluster> {
    Changes {
        seen: HashMap::new(),
        before_listing: None,
        read: vc_read,
        new_is_news: |_| true,
        // The finalizer sees every deletion through; once deleted there is nothing to do.
        deletes: false,
    }
}

fn vc_read(vc: &VirtualCluster) -> u64 {
    let meta = &vc.metadata;
    let status = vc.status.as_ref();
    hash_of((
        &meta.labels,
        &meta.annotations,
        meta.deletion_timestamp.as_ref().map(|t| t.0.as_second()),
        // The spec has no Hash of its own; its JSON is what the apiserver stores anyway.
        serde_json::to_string(&vc.spec).unwrap_or_default(),
        status.and_then(|s| s.phase.as_ref()),
        status.and_then(|s| s.port),
        status.and_then(|s| s.port_map.as_ref()),
        status.and_then(|s| s.vip_map.as_ref()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    use kosmos_api::VirtualClusterSpec;
    use serde_json::json;

    fn job(uid: &str, status: serde_json::Value) -> Job {
        serde_json::from_value(json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {
                "name": format!("vc-dns-install-{uid}"), "namespace": "ns", "uid": uid,
                "labels": { "plugin.kosmos.io/virtual-cluster": "vc" },
                "annotations": { "plugin.kosmos.io/injected": "v1.k.t" },
                "ownerReferences": [{ "apiVersion": "kosmos.io/v1alpha1", "kind": "VirtualCluster",
                    "name": "vc", "uid": "vc-uid", "controller": true }],
            },
            "status": status,
        }))
        .unwrap()
    }

    fn running(uid: &str) -> Job {
        job(
            uid,
            json!({ "active": 1, "ready": 1, "startTime": "2026-12-07T01:00:00Z" }),
        )
    }

    fn complete(uid: &str) -> Job {
        job(
            uid,
            json!({ "succeeded": 1, "completionTime": "2026-12-07T01:01:00Z", "conditions": [
                { "type": "SuccessCriteriaMet", "status": "True" },
                { "type": "Complete", "status": "True", "lastTransitionTime": "2026-12-07T01:01:00Z" },
            ]}),
        )
    }

    fn passed<K: Resource + Clone>(changes: &mut Changes<K>, events: Vec<Event<K>>) -> usize {
        events.into_iter().filter_map(|e| changes.pass(e)).count()
    }

    #[test]
    fn a_job_wakes_its_virtual_cluster_when_it_ends_not_while_it_runs() {
        let mut changes = executor_jobs();
        let created = job("a", json!(null));
        assert_eq!(
            passed(&mut changes, vec![Event::Apply(created)]),
            0,
            "the creator knows"
        );
        let ticks = vec![
            Event::Apply(job(
                "a",
                json!({ "active": 1, "startTime": "2026-12-07T01:00:00Z" }),
            )),
            Event::Apply(running("a")),
            Event::Apply(job(
                "a",
                json!({ "active": 1, "ready": 1,
                "uncountedTerminatedPods": { "succeeded": ["p"] } }),
            )),
        ];
        assert_eq!(passed(&mut changes, ticks), 0, "status ticks while it runs");
        assert_eq!(passed(&mut changes, vec![Event::Apply(complete("a"))]), 1);
        assert_eq!(passed(&mut changes, vec![Event::Apply(complete("a"))]), 0);
        assert_eq!(passed(&mut changes, vec![Event::Delete(complete("a"))]), 1);
    }

    #[test]
    fn a_job_wakes_when_its_mark_changes_it_is_deleted_or_it_fails() {
        let mut changes = executor_jobs();
        changes.pass(Event::Apply(running("a")));
        let mut patched = running("a");
        patched
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert("plugin.kosmos.io/injected".into(), "v1.k.other".into());
        assert_eq!(passed(&mut changes, vec![Event::Apply(patched.clone())]), 1);
        let mut deleting = patched;
        deleting.metadata.deletion_timestamp = complete("a").status.unwrap().completion_time;
        assert_eq!(passed(&mut changes, vec![Event::Apply(deleting)]), 1);
        let failed = job(
            "b",
            json!({ "failed": 1, "conditions": [
            { "type": "Failed", "status": "True", "reason": "BackoffLimitExceeded" }]}),
        );
        assert_eq!(
            passed(&mut changes, vec![Event::Apply(failed)]),
            1,
            "a Job first seen already ended is news"
        );
    }

    #[test]
    fn a_listing_passes_what_is_new_or_changed_and_forgets_what_vanished() {
        let mut changes = executor_jobs();
        changes.pass(Event::Apply(running("a")));
        changes.pass(Event::Apply(running("gone")));
        let relist = vec![
            Event::Init,
            Event::InitApply(running("a")),
            Event::InitApply(complete("b")),
            Event::InitDone,
        ];
        assert_eq!(passed(&mut changes, relist), 1, "b is new, a unchanged");
        assert!(!changes.seen.contains_key("gone"));
        let relist = vec![
            Event::Init,
            Event::InitApply(complete("a")),
            Event::InitDone,
        ];
        assert_eq!(passed(&mut changes, relist), 1, "a ended during the gap");
    }

    fn vc() -> VirtualCluster {
        let mut vc = VirtualCluster::new("vc", VirtualClusterSpec::default());
        vc.metadata.uid = Some("vc-uid".into());
        vc
    }

    #[test]
    fn a_virtual_cluster_is_not_woken_by_the_status_this_operator_writes() {
        let mut changes = virtual_clusters();
        assert_eq!(passed(&mut changes, vec![Event::Apply(vc())]), 1, "new");
        let mut with_finalizer = vc();
        with_finalizer.metadata.finalizers = Some(vec!["kosmos.io/plugins".into()]);
        assert_eq!(
            passed(&mut changes, vec![Event::Apply(with_finalizer.clone())]),
            0,
            "the reconciler that added it went on"
        );
        let mut ready = with_finalizer.clone();
        ready.status = Some(serde_json::from_value(json!({ "phase": "AllNodeReady" })).unwrap());
        assert_eq!(passed(&mut changes, vec![Event::Apply(ready.clone())]), 1);
        let mut written = ready.clone();
        written.status = Some(
            serde_json::from_value(json!({ "phase": "AllNodeReady", "pluginProgress": "2/5",
                "reason": "installing", "updateTime": "2026-12-07T01:00:00Z",
                "conditions": [{ "type": "PluginsInstalled", "status": "False",
                    "reason": "Installing", "message": "2 of 5", "lastTransitionTime": "2026-12-07T01:00:00Z" }],
                "plugins": [{ "name": "dns", "phase": "Succeeded" }] }))
            .unwrap(),
        );
        assert_eq!(passed(&mut changes, vec![Event::Apply(written.clone())]), 0);
        let mut completed = written.clone();
        if let Some(s) = completed.status.as_mut() {
            s.phase = Some("Completed".into());
        }
        assert_eq!(
            passed(&mut changes, vec![Event::Apply(completed.clone())]),
            1
        );
        let mut edited = completed.clone();
        edited.spec.kubeconfig = Some("a2luZDogQ29uZmln".into());
        assert_eq!(passed(&mut changes, vec![Event::Apply(edited.clone())]), 1);
        assert_eq!(
            passed(&mut changes, vec![Event::Delete(edited)]),
            0,
            "the finalizer saw it"
        );
    }
}
