//! Prometheus metrics of the webhook, served on the admin port.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// How a review ended; the `decision` label of the review metrics and log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// An executor Job that got the injection.
    Mutated,
    /// An executor Job that already carried the same injection (empty patch).
    Unchanged,
    /// Not an executor Job (or not a create): allowed as it is.
    Ignored,
    /// Refused, with a message saying why.
    Denied,
    /// The review itself could not be read.
    Invalid,
}

impl Decision {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mutated => "mutated",
            Self::Unchanged => "unchanged",
            Self::Ignored => "ignored",
            Self::Denied => "denied",
            Self::Invalid => "invalid",
        }
    }
}

/// Labels of the review counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// [`Decision::as_str`].
    pub decision: &'static str,
}

/// Every metric the webhook exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reviews: Family<DecisionLabels, Counter>,
    latency: Histogram,
    /// Seconds since the epoch when the serving certificate expires.
    pub cert_expiry: Gauge<i64, AtomicI64>,
    /// Connections to the admission endpoint open now.
    pub connections_open: Gauge,
    /// Connections closed at once because `--max-connections` were open.
    pub connections_refused: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("plugin_webhook");
        let reviews = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "admission_reviews",
            "Admission reviews answered, by decision",
            reviews.clone(),
        );
        let latency = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "admission_review_duration_seconds",
            "Time to answer one admission review",
            latency.clone(),
        );
        let cert_expiry = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When the serving certificate expires (seconds since the Unix epoch)",
            cert_expiry.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Connections to the admission endpoint open now (at most --max-connections)",
            connections_open.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections to the admission endpoint closed at once because --max-connections were open",
            connections_refused.clone(),
        );
        Self {
            registry,
            reviews,
            latency,
            cert_expiry,
            connections_open,
            connections_refused,
        }
    }
}

impl Metrics {
    /// Counts one review.
    pub fn review(&self, decision: Decision, seconds: f64) {
        self.reviews
            .get_or_create(&DecisionLabels {
                decision: decision.as_str(),
            })
            .inc();
        self.latency.observe(seconds);
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
