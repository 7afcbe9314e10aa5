//! Prometheus metrics of the operator, served on the admin port.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label of the error counter: what kind of failure (see `error::Error::reason`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Short snake_case reason.
    pub reason: String,
}

/// The operator's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    errors: Family<ErrorLabels, Counter>,
    install_duration: Histogram,
    jobs_in_flight: Gauge,
    in_flight_by_cluster: Mutex<HashMap<String, i64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("virtual_cluster_operator");
        let reconciles = Counter::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        // 1 s to ~1 h: installs range from a kubectl apply to a helm --wait of a large chart.
        let install_duration = Histogram::new(exponential_buckets(1.0, 2.0, 13));
        let jobs_in_flight = Gauge::default();
        registry.register(
            "reconciles",
            "Reconciliations of VirtualClusters",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciliations by reason",
            errors.clone(),
        );
        registry.register(
            "plugin_install_duration_seconds",
            "Time from creating a plugin's install Job to its completion",
            install_duration.clone(),
        );
        registry.register(
            "jobs_in_flight",
            "Executor Jobs running now, over all VirtualClusters",
            jobs_in_flight.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            install_duration,
            jobs_in_flight,
            in_flight_by_cluster: Mutex::new(HashMap::new()),
        }
    }
}

impl Metrics {
    /// Counts one reconciliation.
    pub fn reconciled(&self) {
        self.reconciles.inc();
    }

    /// Counts one failed reconciliation.
    pub fn failed(&self, reason: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Records how long a plugin's install took.
    pub fn installed(&self, took: Duration) {
        self.install_duration.observe(took.as_secs_f64());
    }

    /// Records how many executor Jobs run for one VirtualCluster (`namespace/name`); 0 forgets it.
    pub fn jobs_running(&self, cluster: &str, running: i64) {
        let Ok(mut map) = self.in_flight_by_cluster.lock() else {
            return;
        };
        if running == 0 {
            map.remove(cluster);
        } else {
            map.insert(cluster.to_owned(), running);
        }
        self.jobs_in_flight.set(map.values().sum());
    }

    /// The metrics in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an error would only truncate the answer.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_every_metric() {
        let m = Metrics::default();
        m.reconciled();
        m.failed("kube_api");
        m.installed(Duration::from_secs(3));
        m.jobs_running("ns/a", 2);
        m.jobs_running("ns/b", 1);
        m.jobs_running("ns/a", 0);
        let text = m.encode();
        assert!(
            text.contains("virtual_cluster_operator_reconciles_total 1"),
            "{text}"
        );
        assert!(
            text.contains("virtual_cluster_operator_reconcile_errors_total{reason=\"kube_api\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("virtual_cluster_operator_plugin_install_duration_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("virtual_cluster_operator_jobs_in_flight 1"),
            "{text}"
        );
    }
}
