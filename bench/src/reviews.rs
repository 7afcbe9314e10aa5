//! `kosmos-bench reviews`: answers one AdmissionReview N times in a loop, as the admission
//! endpoint does (parse, lookups in caches of 1,000 plugins and 1,000 VirtualClusters, the
//! signed mutation, the answer's bytes), without a network or a clock. Made for
//! `valgrind --tool=callgrind`, whose instruction counts repeat to the last digit on a machine
//! whose wall clock swings 2× with the neighbours' load: run it with two values of `--count`,
//! and the difference divided by the difference of counts is the cost of one review.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context as _, Result, bail};
use kosmos_api::mark::{Key, KeySecret};
use kosmos_webhook::admission::{self, AdmissionState};
use kosmos_webhook::mark_key::MarkKey;
use kosmos_webhook::metrics::Metrics;
use kube::ResourceExt as _;
use kube::runtime::reflector;
use kube::runtime::watcher;

use crate::fixture;

/// Flags of `kosmos-bench reviews`.
#[derive(Clone, Debug, clap::Args)]
pub struct ReviewsArgs {
    /// Reviews answered.
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Which review: `pvpath` or `uri`.
    #[arg(long, default_value = "pvpath")]
    pub review: String,
    /// Log each review as `plugin-webhook serve` does (text, to stdout).
    #[arg(long)]
    pub log: bool,
    /// Encode the answer without the pre-encoded script (`encode(review(…))`), to weigh it.
    #[arg(long)]
    pub plain: bool,
    /// Write the review here (the bytes the loop answers).
    #[arg(long)]
    pub write_review: Option<std::path::PathBuf>,
    /// Write the last answer here (to compare the bytes before and after a change).
    #[arg(long)]
    pub answer: Option<std::path::PathBuf>,
}

const NS: &str = "tenants";

/// Runs the loop; prints the sizes of the review and the answer.
pub fn run(args: &ReviewsArgs) -> Result<()> {
    if args.log {
        kosmos_runtime::init_logging(kosmos_runtime::LogFormat::Text);
    }
    let plugin_name = match args.review.as_str() {
        "pvpath" => fixture::PV_PATH_PLUGIN,
        "uri" => fixture::URI_CHART_PLUGIN,
        other => bail!("--review {other}: expected pvpath or uri"),
    };
    let plugins = fixture::plugins(NS, 998)?;
    let kubeconfig = "apiVersion: v1\nkind: Config\n".repeat(60);
    let enabled = [
        fixture::PV_PATH_PLUGIN.to_owned(),
        fixture::URI_CHART_PLUGIN.to_owned(),
    ];
    let mut vcs = fixture::virtual_clusters(NS, 1000, &enabled, &kubeconfig)?;
    let (plugin_store, mut plugin_writer) = reflector::store();
    let (vc_store, mut vc_writer) = reflector::store();
    for p in &plugins {
        let mut p = p.clone();
        kosmos_webhook::server::slim_plugin(&mut p);
        plugin_writer.apply_watcher_event(&watcher::Event::Apply(p));
    }
    for (i, v) in vcs.iter_mut().enumerate() {
        // The apiserver gives every object a uid; the operator's Job refers to its owner by it.
        v.metadata.uid = Some(format!("{i:08x}-0000-4000-8000-000000000000"));
        let mut slim = v.clone();
        kosmos_webhook::server::slim_virtual_cluster(&mut slim);
        vc_writer.apply_watcher_event(&watcher::Event::Apply(slim));
    }
    // As deployed: marks signed with the key from the key Secret.
    let mark_key = MarkKey::from_secret(KeySecret {
        namespace: "kosmos-system".to_owned(),
        name: kosmos_api::mark::DEFAULT_KEY_SECRET.to_owned(),
    });
    mark_key
        .key
        .store(Some(Arc::new(Key::new(&[7; kosmos_api::mark::KEY_BYTES])?)));
    let state = AdmissionState {
        plugins: plugin_store.into(),
        virtual_clusters: vc_store.into(),
        settings: Default::default(),
        operator_user: fixture::OPERATOR_USER.to_owned(),
        metrics: Arc::new(Metrics::default()),
        synced: AtomicBool::new(true),
        mark_key: Arc::new(mark_key),
    };
    let plugin = plugins
        .iter()
        .find(|p| p.name_any() == plugin_name)
        .context("featured plugin missing")?;
    let job = fixture::bare_job(&vcs[500], plugin);
    let body = serde_json::to_vec(&fixture::review(&job, fixture::OPERATOR_USER))?;

    if let Some(path) = &args.write_review {
        std::fs::write(path, &body).with_context(|| format!("writing {}", path.display()))?;
    }
    let mut last = Vec::new();
    for _ in 0..args.count {
        let body = std::hint::black_box(&body);
        last = std::hint::black_box(if args.plain {
            admission::encode(admission::review(&state, body))
        } else {
            admission::answer(&state, body)
        });
    }
    if !last.windows(9).any(|w| w == br#""patch":""#) {
        bail!(
            "the answer carries no patch: {}",
            String::from_utf8_lossy(&last)
        );
    }
    if let Some(path) = &args.answer {
        std::fs::write(path, &last).with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!(
        "{} reviews of {} bytes, answers of {} bytes",
        args.count,
        body.len(),
        last.len()
    );
    Ok(())
}
