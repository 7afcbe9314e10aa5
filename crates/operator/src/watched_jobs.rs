//! The executor Jobs as the operator keeps them from its watch: each Job's metadata and status,
//! and what its mark said when it arrived.
//!
//! A reconciliation used to list its VirtualCluster's Jobs from the apiserver, so that no
//! decision rested on a cache. At a thousand VirtualClusters that list was ~4 per VirtualCluster,
//! each carrying five Jobs of ~20 KB (most of it the executor script), which the apiserver
//! encoded and the operator decoded (docs/benchmarks.md). The guarantee it gave, never creating a
//! Job twice, holds without it: a Job's name is fixed by its VirtualCluster, plugin, spec hash,
//! action and attempt, so a create that a stale cache asks for again is answered 409 and the
//! existing Job is read instead (`create_job`). A Job's end reaches the store before it wakes
//! its VirtualCluster (the reflector runs before the trigger).
//!
//! The spec is not kept: it is most of a Job's bytes and the reconciler reads only metadata and
//! status. The mark, which covers the spec, is checked once when the Job (or a change of it)
//! arrives; the pod template of a Job never changes. A mark checked then still counts only while
//! its key is in the key Secret ([`crate::mark_keys::MarkKeys::holds`]), and a Job whose mark
//! could not be checked (the key Secret unreadable) is read and checked by the reconciler.

use std::borrow::Cow;
use std::sync::Arc;

use futures::{Stream, TryStreamExt as _};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::runtime::watcher::{self, Event};
use tracing::debug;

use crate::context::Context;
use crate::jobs::Mark;

/// An executor Job without its spec, with the verdict on its mark.
#[derive(Clone, Debug)]
pub struct WatchedJob {
    /// The Job: metadata (managed fields dropped) and status.
    pub job: Job,
    /// What its mark said when it arrived; `None` when the key Secret could not be read then.
    pub mark: Option<Mark>,
}

impl WatchedJob {
    /// What is kept of `job`, with `mark`.
    pub fn new(mut job: Job, mark: Option<Mark>) -> Self {
        job.spec = None;
        job.metadata.managed_fields = None;
        Self { job, mark }
    }

    /// Checks the mark of `job` as it arrives, then keeps it.
    async fn arrived(ctx: &Context, job: Job) -> Self {
        let mark = match ctx.mark_keys.check(&ctx.client, &job).await {
            Ok(mark) => Some(mark),
            Err(error) => {
                debug!(job = ?job.metadata.name, %error, "mark not checked as the job arrived; the reconciler reads it");
                None
            }
        };
        Self::new(job, mark)
    }
}

impl Resource for WatchedJob {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        Job::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        Job::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        Job::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        Job::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.job.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.job.metadata
    }
}

/// The events of a Job watch as events of [`WatchedJob`]s, marks checked on the way.
pub fn kept(
    ctx: Arc<Context>,
    events: impl Stream<Item = watcher::Result<Event<Job>>> + Send,
) -> impl Stream<Item = watcher::Result<Event<WatchedJob>>> + Send {
    events.and_then(move |event| {
        let ctx = ctx.clone();
        async move {
            Ok(match event {
                Event::Apply(job) => Event::Apply(WatchedJob::arrived(&ctx, job).await),
                Event::InitApply(job) => Event::InitApply(WatchedJob::arrived(&ctx, job).await),
                // A deleted Job is only forgotten: its mark no longer matters.
                Event::Delete(job) => Event::Delete(WatchedJob::new(job, None)),
                Event::Init => Event::Init,
                Event::InitDone => Event::InitDone,
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use futures::StreamExt as _;
    use http::{Request, Response, StatusCode};
    use kosmos_api::{contract, mark};
    use kube::Client;
    use kube::client::Body;
    use serde_json::json;

    fn job(name: &str, mark: Option<&str>) -> Job {
        let mut job: Job = serde_json::from_value(json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": { "name": name, "namespace": "ns", "uid": name,
                "managedFields": [{ "manager": "virtual-cluster-operator", "operation": "Update" }] },
            "spec": { "template": { "spec": { "containers": [
                { "name": "executor", "image": "img", "command": ["/bin/sh", "-c", "long script"] },
            ] } } },
            "status": { "active": 1 },
        }))
        .unwrap();
        if let Some(mark) = mark {
            job.metadata.annotations =
                Some([(contract::INJECTED_ANNOTATION.to_owned(), mark.to_owned())].into());
        }
        job
    }

    /// Kept Jobs lose their spec and managed fields; an unmarked Job needs no keys; a marked one
    /// whose keys cannot be read is kept unchecked (the reconciler reads it), never as verified.
    #[tokio::test]
    async fn jobs_are_kept_without_their_spec_and_with_the_verdict_on_their_mark() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let key_reads = tokio::spawn(async move {
            let mut reads = 0;
            while let Some((request, send)) = handle.next_request().await {
                assert!(
                    request.uri().path().contains("/secrets/"),
                    "{}",
                    request.uri()
                );
                reads += 1;
                let failure = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "InternalError", "code": 500, "message": "etcd is away"});
                send.send_response(
                    Response::builder()
                        .status(StatusCode::INTERNAL_SERVER_ERROR)
                        .body(Body::from(serde_json::to_vec(&failure).unwrap()))
                        .unwrap(),
                );
            }
            reads
        });
        let args = crate::server::Args::local("ns", "test", &[]).expect("flags");
        let ctx = Arc::new(Context::new(
            Client::new(service, "ns"),
            Arc::default(),
            args.config(),
        ));
        let signed = mark::sign(
            &mark::Key::new(&[7; mark::KEY_BYTES]).unwrap(),
            &job("b", None),
        );
        let events = futures::stream::iter(vec![
            Ok(Event::Init),
            Ok(Event::InitApply(job("a", None))),
            Ok(Event::InitDone),
            Ok(Event::Apply(job("b", Some(&signed)))),
            Ok(Event::Delete(job("a", None))),
        ]);
        let out: Vec<Event<WatchedJob>> = kept(ctx.clone(), events)
            .map(|e| e.expect("no watch error"))
            .collect()
            .await;
        drop(ctx);
        let [
            Event::Init,
            Event::InitApply(a),
            Event::InitDone,
            Event::Apply(b),
            Event::Delete(gone),
        ] = out.as_slice()
        else {
            panic!("the events keep their kind and order: {out:?}");
        };
        assert_eq!(a.mark, Some(Mark::Unmarked));
        assert_eq!(b.mark, None, "keys unreadable: unchecked");
        assert_eq!(gone.mark, None);
        for kept in [a, b, gone] {
            assert!(kept.job.spec.is_none());
            assert!(kept.job.metadata.managed_fields.is_none());
            assert!(
                kept.job.status.is_some(),
                "the status is what the reconciler reads"
            );
        }
        assert_eq!(
            b.job.metadata.annotations,
            job("b", Some(&signed)).metadata.annotations
        );
        assert_eq!(
            key_reads.await.unwrap(),
            1,
            "only the marked Job needed the keys"
        );
    }
}
