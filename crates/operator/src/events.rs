//! Events on the VirtualCluster (and the same lines in the log), one per note of the plan.

use k8s_openapi::api::events::v1 as events_v1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kosmos_api::{VirtualCluster, contract};
use kube::api::PostParams;
use kube::{Api, Resource, ResourceExt};
use tracing::{info, warn};

use crate::context::Context;
use crate::plan::{self, NoteKind};

pub(crate) async fn publish(ctx: &Context, vc: &VirtualCluster, notes: &[plan::Note]) {
    let reference = vc.object_ref(&());
    for note in notes {
        match note.kind {
            NoteKind::Normal => {
                info!(
                    reason = note.reason,
                    plugin = note.plugin.as_deref(),
                    "{}",
                    note.message
                );
            }
            NoteKind::Warning => {
                warn!(
                    reason = note.reason,
                    plugin = note.plugin.as_deref(),
                    "{}",
                    note.message
                );
            }
        }
        // Our own Event object rather than kube's recorder: the recorder folds events with the
        // same reason into one series that keeps the *first* message (ours differ in what
        // matters: plugin, Job, termination message), and names each event
        // `<object>.<time>`, which is too long for objects with long names.
        let now = Timestamp::now();
        let event = events_v1::Event {
            metadata: ObjectMeta {
                name: Some(event_name(&vc.name_any(), now.as_nanosecond())),
                namespace: vc.namespace(),
                ..ObjectMeta::default()
            },
            action: Some("Reconcile".to_owned()),
            reason: Some(note.reason.to_owned()),
            note: Some(note.message.clone()),
            type_: Some(
                match note.kind {
                    NoteKind::Normal => "Normal",
                    NoteKind::Warning => "Warning",
                }
                .to_owned(),
            ),
            event_time: Some(MicroTime(now)),
            regarding: Some(reference.clone()),
            reporting_controller: Some(ctx.reporter.controller.clone()),
            reporting_instance: Some(
                ctx.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| ctx.reporter.controller.clone()),
            ),
            ..events_v1::Event::default()
        };
        let api: Api<events_v1::Event> =
            Api::namespaced(ctx.client.clone(), &vc.namespace().unwrap_or_default());
        if let Err(error) = api.create(&PostParams::default(), &event).await {
            warn!(%error, reason = note.reason, "could not publish event");
        }
    }
}

/// The name of an event about `object`: `<object>.<time in hex>`, as kube's recorder names
/// them, with the object's name cut and hashed where the whole would pass the 253 characters
/// an object name may have.
fn event_name(object: &str, nanos: i128) -> String {
    let suffix = format!("{nanos:x}");
    let room = 253 - suffix.len() - 1;
    if object.len() <= room {
        return format!("{object}.{suffix}");
    }
    let hash = contract::short_hash(&[object.as_bytes()], 16);
    let cut: String = object.chars().take(room - hash.len() - 1).collect();
    let cut = cut.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    format!("{cut}-{hash}.{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_fit_whatever_the_object_name() {
        let nanos = 1_800_000_000_123_456_789_i128;
        assert_eq!(event_name("vc", nanos), format!("vc.{nanos:x}"));
        let long_a = format!("{}a", "v".repeat(252));
        let long_b = format!("{}b", "v".repeat(252));
        for long in [&long_a, &long_b] {
            let name = event_name(long, nanos);
            assert!(name.len() <= 253, "{} characters", name.len());
            assert!(name.starts_with("vvvv") && !name.contains("-."), "{name}");
        }
        assert_ne!(event_name(&long_a, nanos), event_name(&long_b, nanos));
    }
}
