//! `builtin` readiness: the virtual API answers and every promoted node is Ready, probed by
//! tasks beside the reconciler so a reconciliation never waits on a virtual API.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kosmos_api::kubeconfig::SafeKubeconfig;
use kosmos_api::{VirtualCluster, contract, phase};
use kube::{Api, Client, ResourceExt};

use crate::context::Context;
use crate::plan::Readiness;

/// Poll interval while waiting for readiness or a kubeconfig, which no watch announces.
pub(crate) const POLL: Duration = Duration::from_secs(10);
/// What [`Readiness::NotReady`] says while the first probe of a kubeconfig runs.
pub(crate) const PROBING: &str = "probing the virtual API";
/// Bound on one probe, client construction included: a virtual API that is gone or slow must
/// not keep a probe (or the operator's memory of it) forever.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);
/// How soon the reconciler looks again while a probe runs.
pub(crate) const PROBE_POLL: Duration = Duration::from_secs(2);

/// Builtin readiness probes, one per VirtualCluster, run as tasks beside the reconciler: a
/// reconciliation never waits on a virtual API, it reads the last answer and starts the next
/// probe when that answer is older than [`POLL`].
pub struct Probes {
    state: std::sync::Mutex<BTreeMap<String, ProbeState>>,
    /// Bound on one probe ([`PROBE_TIMEOUT`]).
    timeout: Duration,
}

impl Default for Probes {
    fn default() -> Self {
        Self {
            state: std::sync::Mutex::default(),
            timeout: PROBE_TIMEOUT,
        }
    }
}

struct ProbeState {
    /// What was probed: the VirtualCluster's uid, the checked kubeconfig and the nodes.
    key: String,
    /// The last answer and when it came.
    answer: Option<(Readiness, std::time::Instant)>,
    /// A probe task is running.
    running: bool,
}

impl Probes {
    /// The last answer for `id`'s `key`; starts a probe (`run`) when there is none running and
    /// the answer is missing or older than [`POLL`].
    fn answer<F>(self: &Arc<Self>, id: String, key: String, run: F) -> Readiness
    where
        F: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        let Ok(mut state) = self.state.lock() else {
            return Readiness::NotReady("the readiness probe state is poisoned".into());
        };
        let entry = state.entry(id.clone()).or_insert_with(|| ProbeState {
            key: key.clone(),
            answer: None,
            running: false,
        });
        if entry.key != key {
            // Another kubeconfig or node list: an earlier answer says nothing about it.
            entry.key = key.clone();
            entry.answer = None;
        }
        let stale = entry
            .answer
            .as_ref()
            .is_none_or(|(_, at)| at.elapsed() >= POLL);
        if stale && !entry.running {
            entry.running = true;
            let probes = Arc::clone(self);
            let timeout = self.timeout;
            tokio::spawn(async move {
                let readiness = match tokio::time::timeout(timeout, run).await {
                    Ok(Ok(())) => Readiness::Ready,
                    Ok(Err(why)) => Readiness::NotReady(why),
                    Err(_) => Readiness::NotReady(format!(
                        "the virtual API did not answer within {timeout:?}"
                    )),
                };
                if let Ok(mut state) = probes.state.lock()
                    && let Some(entry) = state.get_mut(&id)
                {
                    entry.running = false;
                    // An answer for a kubeconfig that changed meanwhile is dropped.
                    if entry.key == key {
                        entry.answer = Some((readiness, std::time::Instant::now()));
                    }
                }
            });
        }
        entry
            .answer
            .as_ref()
            .map_or_else(|| Readiness::NotReady(PROBING.into()), |(r, _)| r.clone())
    }

    /// Forgets a VirtualCluster that is gone.
    pub(crate) fn forget(&self, id: &str) {
        if let Ok(mut state) = self.state.lock() {
            state.remove(id);
        }
    }
}

/// `builtin` readiness: the virtual API answers and every promoted node is Ready.
pub(crate) fn check_readiness(
    ctx: &Context,
    vc: &VirtualCluster,
    kubeconfig: Option<&SafeKubeconfig>,
) -> Readiness {
    let current = vc.phase();
    if current == phase::ALL_NODE_READY || current == phase::COMPLETED {
        return Readiness::Ready;
    }
    if !["", phase::PREPARING, phase::INITIALIZED, phase::PENDING].contains(&current) {
        return Readiness::NotReady(format!("phase {current} is not one the operator advances"));
    }
    let Some(kubeconfig) = kubeconfig else {
        return Readiness::NotReady("no usable kubeconfig for the virtual cluster yet".into());
    };
    let nodes = vc
        .spec
        .promote_resources
        .as_ref()
        .map(|p| p.node_names())
        .unwrap_or_default();
    let text = kubeconfig.to_yaml();
    let key = contract::short_hash(
        &[
            vc.uid().unwrap_or_default().as_bytes(),
            text.as_bytes(),
            nodes.join(",").as_bytes(),
        ],
        32,
    );
    let id = format!("{}/{}", vc.namespace().unwrap_or_default(), vc.name_any());
    ctx.probes.answer(id, key, probe(text, nodes))
}

/// Asks the virtual API for its version and each promoted node's Ready condition, with a client
/// built from the checked kubeconfig only.
async fn probe(kubeconfig: String, nodes: Vec<String>) -> Result<(), String> {
    let parsed = kube::config::Kubeconfig::from_yaml(&kubeconfig)
        .map_err(|e| format!("the kubeconfig does not parse: {e}"))?;
    let mut config =
        kube::Config::from_custom_kubeconfig(parsed, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| format!("the kubeconfig is not usable: {e}"))?;
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(10));
    let client =
        Client::try_from(config).map_err(|e| format!("no client for the virtual cluster: {e}"))?;
    client
        .apiserver_version()
        .await
        .map_err(|e| format!("the virtual API does not answer: {e}"))?;
    let api: Api<Node> = Api::all(client.clone());
    let mut not_ready = Vec::new();
    for node in &nodes {
        let ready = api
            .get_opt(node)
            .await
            .map_err(|e| format!("reading node {node} in the virtual cluster: {e}"))?
            .and_then(|n| n.status)
            .and_then(|s| s.conditions)
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if !ready {
            not_ready.push(node.clone());
        }
    }
    if not_ready.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "promoted nodes not Ready: {}",
            not_ready.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reconciler never waits on a probe; a probe that hangs (a virtual API that accepts and
    /// never answers) ends at its bound; a fresh answer is reused; another kubeconfig is probed
    /// anew.
    #[tokio::test]
    async fn probes_run_beside_the_reconciler_and_are_bounded() {
        let probes = Arc::new(Probes {
            timeout: Duration::from_millis(200),
            ..Probes::default()
        });
        let started = std::time::Instant::now();
        let first = probes.answer("ns/vc".into(), "k1".into(), std::future::pending());
        assert_eq!(first, Readiness::NotReady(PROBING.into()));
        assert!(started.elapsed() < Duration::from_millis(100));
        // Still running: no second probe.
        let again = probes.answer("ns/vc".into(), "k1".into(), async {
            panic!("a second probe while one runs")
        });
        assert_eq!(again, Readiness::NotReady(PROBING.into()));
        tokio::time::sleep(Duration::from_millis(400)).await;
        let bounded = probes.answer("ns/vc".into(), "k1".into(), async {
            panic!("a second probe while the answer is fresh")
        });
        assert_eq!(
            bounded,
            Readiness::NotReady("the virtual API did not answer within 200ms".into())
        );
        // Another kubeconfig: the old answer says nothing about it.
        let other = probes.answer("ns/vc".into(), "k2".into(), async { Ok(()) });
        assert_eq!(other, Readiness::NotReady(PROBING.into()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let ready = probes.answer("ns/vc".into(), "k2".into(), std::future::pending());
        assert_eq!(ready, Readiness::Ready);
        probes.forget("ns/vc");
        let forgotten = probes.answer("ns/vc".into(), "k2".into(), async { Ok(()) });
        assert_eq!(forgotten, Readiness::NotReady(PROBING.into()));
    }
}
