//! Events on the VirtualCluster, one per reason and reconciliation: the notes of the plan with
//! the same reason (five plugins starting at once) are one Event listing them all, instead of
//! five writes. The log keeps one line per note.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1 as events_v1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kosmos_api::{VirtualCluster, contract};
use kube::api::PostParams;
use kube::{Api, Resource, ResourceExt};
use tracing::{Instrument as _, Span, info, warn};

use crate::context::Context;
use crate::plan::{self, NoteKind};

/// The most an event's note may hold (the API refuses longer ones).
const MAX_NOTE: usize = 1024;

/// Joins the messages of notes with the same kind and reason, in the order each reason first
/// appears, `; ` between them; a message that would take an event's note past [`MAX_NOTE`]
/// starts the next event of that reason.
fn fold(notes: &[plan::Note]) -> Vec<(NoteKind, &'static str, String)> {
    let mut events: Vec<(NoteKind, &'static str, String)> = Vec::new();
    for note in notes {
        let last = events
            .iter_mut()
            .rev()
            .find(|(kind, reason, _)| *kind == note.kind && *reason == note.reason)
            .filter(|(_, _, message)| message.len() + 2 + note.message.len() <= MAX_NOTE);
        match last {
            Some((_, _, message)) => {
                message.push_str("; ");
                message.push_str(&note.message);
            }
            None => events.push((note.kind, note.reason, note.message.clone())),
        }
    }
    events
}

/// Logs the notes, one line each, and writes their events beside the reconciliations that
/// follow: events are the debugging trail, not state, and writing them in line held the
/// reconciliation's slot for one more round trip (docs/benchmarks.md). The order of one
/// reconciliation's events is kept.
pub(crate) fn publish(ctx: &Arc<Context>, vc: &VirtualCluster, notes: &[plan::Note]) {
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
    }
    let events = fold(notes);
    if events.is_empty() {
        return;
    }
    let (ctx, reference) = (ctx.clone(), vc.object_ref(&()));
    let (name, ns) = (vc.name_any(), vc.namespace().unwrap_or_default());
    let write = async move {
        let api: Api<events_v1::Event> = Api::namespaced(ctx.client.clone(), &ns);
        for (kind, reason, message) in events {
            let event = event(&ctx, &reference, &name, kind, reason, message);
            if let Err(error) = api.create(&PostParams::default(), &event).await {
                warn!(%error, reason, "could not publish event");
            }
        }
    };
    tokio::spawn(write.instrument(Span::current()));
}

fn event(
    ctx: &Context,
    reference: &ObjectReference,
    name: &str,
    kind: NoteKind,
    reason: &'static str,
    message: String,
) -> events_v1::Event {
    // Our own Event object rather than kube's recorder: the recorder folds events with the
    // same reason into one series that keeps the *first* message (ours differ in what
    // matters: plugin, Job, termination message), and names each event
    // `<object>.<time>`, which is too long for objects with long names.
    let now = Timestamp::now();
    events_v1::Event {
        metadata: ObjectMeta {
            name: Some(event_name(name, now.as_nanosecond())),
            namespace: reference.namespace.clone(),
            ..ObjectMeta::default()
        },
        action: Some("Reconcile".to_owned()),
        reason: Some(reason.to_owned()),
        note: Some(message),
        type_: Some(
            match kind {
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

    fn note(kind: NoteKind, reason: &'static str, message: &str) -> plan::Note {
        plan::Note {
            kind,
            reason,
            message: message.to_owned(),
            plugin: None,
        }
    }

    #[test]
    fn notes_of_one_reason_are_one_event_in_order() {
        let notes = [
            note(NoteKind::Normal, "InstallStarted", "plugin a: created"),
            note(NoteKind::Warning, "JobRejected", "plugin b: refused"),
            note(NoteKind::Normal, "InstallStarted", "plugin c: created"),
            note(NoteKind::Normal, "PluginInstalled", "plugin d: installed"),
        ];
        let events = fold(&notes);
        assert_eq!(
            events,
            [
                (
                    NoteKind::Normal,
                    "InstallStarted",
                    "plugin a: created; plugin c: created".to_owned()
                ),
                (
                    NoteKind::Warning,
                    "JobRejected",
                    "plugin b: refused".to_owned()
                ),
                (
                    NoteKind::Normal,
                    "PluginInstalled",
                    "plugin d: installed".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn a_folded_event_never_passes_what_a_note_holds() {
        let long = "x".repeat(600);
        let notes: Vec<_> = (0..3)
            .map(|_| note(NoteKind::Warning, "InstallFailed", &long))
            .collect();
        let events = fold(&notes);
        assert_eq!(events.len(), 3, "600 + 2 + 600 is past 1024");
        let short: Vec<_> = (0..10)
            .map(|i| {
                note(
                    NoteKind::Normal,
                    "InstallStarted",
                    &format!("plugin p{i}: {}", "y".repeat(200)),
                )
            })
            .collect();
        let events = fold(&short);
        assert!(events.iter().all(|(_, _, m)| m.len() <= MAX_NOTE));
        let joined: Vec<String> = events.iter().map(|(_, _, m)| m.clone()).collect();
        assert_eq!(
            joined.join("; "),
            short
                .iter()
                .map(|n| n.message.clone())
                .collect::<Vec<_>>()
                .join("; "),
            "every message, once, in order"
        );
    }

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
