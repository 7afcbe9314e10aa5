//! The cost of one review inside the webhook, without the network: parsing the
//! AdmissionReview, looking the plugin and the VirtualCluster up in caches of 1,000 each,
//! building the patch (`mutate`), and serialising the answer; then all of it together, as the
//! handler does it.

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use criterion::{Criterion, criterion_group, criterion_main};
use k8s_openapi::api::batch::v1::Job;
use kosmos_api::{VirtualCluster, VirtualClusterPlugin};
use kosmos_bench::fixture;
use kosmos_webhook::admission::{self, AdmissionState};
use kosmos_webhook::metrics::Metrics;
use kube::ResourceExt as _;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher;

const NS: &str = "tenants";

fn bench(c: &mut Criterion) {
    let plugins = fixture::plugins(NS, 998).unwrap();
    let kubeconfig = "apiVersion: v1\nkind: Config\n".repeat(60);
    let vcs = fixture::virtual_clusters(
        NS,
        1000,
        &[
            fixture::PV_PATH_PLUGIN.into(),
            fixture::URI_CHART_PLUGIN.into(),
        ],
        &kubeconfig,
    )
    .unwrap();
    let (plugin_store, mut plugin_writer) = reflector::store();
    let (vc_store, mut vc_writer) = reflector::store();
    for p in &plugins {
        plugin_writer.apply_watcher_event(&watcher::Event::Apply(p.clone()));
    }
    for v in &vcs {
        vc_writer.apply_watcher_event(&watcher::Event::Apply(v.clone()));
    }
    let state = Arc::new(AdmissionState {
        plugins: plugin_store.clone().into(),
        virtual_clusters: vc_store.clone().into(),
        settings: Default::default(),
        operator_user: fixture::OPERATOR_USER.into(),
        metrics: Arc::new(Metrics::default()),
        synced: AtomicBool::new(true),
        mark_key: Default::default(),
    });

    for (name, plugin_name) in [
        ("pvpath", fixture::PV_PATH_PLUGIN),
        ("uri", fixture::URI_CHART_PLUGIN),
    ] {
        let plugin = plugins
            .iter()
            .find(|p| p.name_any() == plugin_name)
            .unwrap();
        let vc = &vcs[500];
        let job = fixture::bare_job(vc, plugin);
        let body = serde_json::to_vec(&fixture::review(&job, fixture::OPERATOR_USER)).unwrap();
        let mut group = c.benchmark_group(name);

        group.bench_function("1 parse", |b| {
            b.iter(|| {
                // As the handler parses a review of a Job: straight into the typed Job.
                let review: AdmissionReview<Job> =
                    serde_json::from_slice(black_box(&body)).unwrap();
                let request: AdmissionRequest<Job> = review.try_into().unwrap();
                black_box(request.object.unwrap())
            })
        });
        let plugin_ref = ObjectRef::<VirtualClusterPlugin>::new(plugin_name).within(NS);
        let vc_ref = ObjectRef::<VirtualCluster>::new(&vc.name_any()).within(NS);
        group.bench_function("2 lookup", |b| {
            b.iter(|| {
                black_box((
                    plugin_store.get(black_box(&plugin_ref)).unwrap(),
                    vc_store.get(black_box(&vc_ref)).unwrap(),
                ))
            })
        });
        // The handler parses the Job's identity once before the lookups; measured apart here.
        let id = kosmos_webhook::parse_job(&job).unwrap();
        group.bench_function("3 patch building (mutate)", |b| {
            b.iter(|| {
                black_box(
                    kosmos_webhook::mutate(black_box(&job), &id, plugin, vc, &state.settings)
                        .unwrap(),
                )
            })
        });
        let mutation = kosmos_webhook::mutate_job(&job, plugin, vc, &state.settings).unwrap();
        let review: AdmissionReview<DynamicObject> = serde_json::from_slice(&body).unwrap();
        let request: AdmissionRequest<DynamicObject> = review.try_into().unwrap();
        let answer = AdmissionResponse::from(&request)
            .with_patch(mutation.patch)
            .unwrap()
            .into_review();
        group.bench_function("4 serialisation", |b| {
            b.iter(|| black_box(admission::encode(black_box(answer.clone()))))
        });
        group.bench_function("all: review + serialisation", |b| {
            b.iter(|| black_box(admission::answer(&state, black_box(&body))))
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
