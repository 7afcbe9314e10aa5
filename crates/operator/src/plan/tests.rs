//! Table tests of the decisions: which plugins, in what order, what next, backoff, verdict.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kosmos_api::contract::{self, Action, ExecutorJobId};
use kosmos_api::{
    PluginPhase, PluginRef, PluginSet, PluginStatus, VirtualCluster, VirtualClusterPlugin,
    VirtualClusterPluginSpec, VirtualClusterSpec, VirtualClusterStatus, condition, phase,
};
use serde_json::json;

use super::*;

const NOW: i64 = 1_800_000_000;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).unwrap()
}

fn plugin(name: &str, by_default: bool, deps: &[&str]) -> VirtualClusterPlugin {
    let mut spec: VirtualClusterPluginSpec = serde_json::from_value(json!({
        "pluginSources": { "yaml": { "path": { "uri": format!("https://example.com/{name}.yaml") } } },
    }))
    .unwrap();
    spec.enabled_by_default = by_default;
    spec.depends_on = deps.iter().map(|d| PluginRef::new(*d)).collect();
    let mut p = VirtualClusterPlugin::new(name, spec);
    p.metadata.namespace = Some("ns".into());
    p
}

fn hash(p: &VirtualClusterPlugin) -> String {
    contract::spec_hash(&p.spec)
}

fn vc(phase: &str, enabled: &[&str], disabled: &[&str]) -> VirtualCluster {
    let mut vc = VirtualCluster::new(
        "vc1",
        VirtualClusterSpec {
            plugin_set: Some(PluginSet {
                enabled: enabled.iter().map(|n| PluginRef::new(*n)).collect(),
                disabled: disabled.iter().map(|n| PluginRef::new(*n)).collect(),
            }),
            ..VirtualClusterSpec::default()
        },
    );
    vc.metadata.namespace = Some("ns".into());
    vc.status = Some(VirtualClusterStatus {
        phase: (!phase.is_empty()).then(|| phase.to_owned()),
        ..VirtualClusterStatus::default()
    });
    vc
}

fn with_entries(mut vc: VirtualCluster, entries: Vec<PluginStatus>) -> VirtualCluster {
    if let Some(s) = vc.status.as_mut() {
        s.plugins = entries;
    }
    vc
}

fn entry(
    name: &str,
    phase: PluginPhase,
    hash: &str,
    job: Option<&str>,
    attempts: i32,
) -> PluginStatus {
    PluginStatus {
        name: name.into(),
        phase,
        spec_hash: Some(hash.into()),
        job_name: job.map(Into::into),
        attempts,
        ..PluginStatus::default()
    }
}

fn job(p: &VirtualClusterPlugin, action: Action, attempt: u32, outcome: JobOutcome) -> JobView {
    let name = p.metadata.name.clone().unwrap();
    let h = hash(p);
    let id = ExecutorJobId::new("vc1", &name, action, &h, attempt, "");
    JobView {
        name: id.job_name(),
        id,
        injected: true,
        forged: None,
        taken_names: Vec::new(),
        deleting: false,
        finished_at: (outcome != JobOutcome::Running).then(|| at(NOW - 5)),
        outcome,
        started_at: Some(at(NOW - 60)),
    }
}

fn failed(message: &str) -> JobOutcome {
    JobOutcome::Failed {
        message: message.into(),
    }
}

fn settings() -> Settings {
    Settings {
        max_attempts: 3,
        max_parallel_jobs: 4,
        backoff_base: Duration::from_secs(10),
        backoff_max: Duration::from_secs(300),
    }
}

fn observe<'a>(
    vc: &'a VirtualCluster,
    plugins: &'a [VirtualClusterPlugin],
    jobs: &'a [JobView],
) -> Observed<'a> {
    Observed {
        vc,
        plugins,
        jobs,
        kubeconfig: Kubeconfig::Available,
        readiness: Readiness::External,
        deletion: None,
        rejected: &[],
        webhook_unavailable: None,
        taken: &[],
        now: at(NOW),
    }
}

fn run(vc: &VirtualCluster, plugins: &[VirtualClusterPlugin], jobs: &[JobView]) -> Plan {
    plan(&observe(vc, plugins, jobs), &settings())
}

fn created(plan: &Plan) -> Vec<(String, Action, u32)> {
    plan.steps
        .iter()
        .filter_map(|s| match s {
            Step::CreateJob(j) => Some((j.id.plugin.clone(), j.id.action, j.id.attempt)),
            Step::DeleteJob { .. } => None,
        })
        .collect()
}

fn deleted(plan: &Plan) -> Vec<String> {
    plan.steps
        .iter()
        .filter_map(|s| match s {
            Step::DeleteJob { name, .. } => Some(name.clone()),
            Step::CreateJob(_) => None,
        })
        .collect()
}

fn phase_of(plan: &Plan, plugin: &str) -> Option<PluginPhase> {
    plan.status
        .plugins
        .iter()
        .find(|e| e.name == plugin)
        .map(|e| e.phase)
}

fn cond<'p>(
    plan: &'p Plan,
    type_: &str,
) -> Option<&'p k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    plan.status.conditions.iter().find(|c| c.type_ == type_)
}

fn names(order: &[&VirtualClusterPlugin]) -> Vec<String> {
    order
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Which plugins, in which order

#[test]
fn set_is_defaults_plus_enabled_minus_disabled() {
    let plugins = [
        plugin("dns", true, &[]),
        plugin("proxy", true, &[]),
        plugin("cni", false, &[]),
        plugin("extra", false, &[]),
    ];
    let cases: [(&[&str], &[&str], &[&str]); 5] = [
        (&[], &[], &["dns", "proxy"]),
        (&["cni"], &[], &["cni", "dns", "proxy"]),
        (&["cni"], &["dns"], &["cni", "proxy"]),
        (&[], &["dns", "proxy"], &[]),
        (
            &["extra", "cni"],
            &["absent"],
            &["cni", "dns", "extra", "proxy"],
        ),
    ];
    for (enabled, disabled, want) in cases {
        let v = vc(phase::ALL_NODE_READY, enabled, disabled);
        let got = names(&resolve(&v, &plugins).unwrap());
        assert_eq!(got, want, "enabled {enabled:?} disabled {disabled:?}");
    }
}

#[test]
fn missing_plugin_is_a_problem_naming_it() {
    let plugins = [plugin("dns", false, &[])];
    let v = vc(phase::ALL_NODE_READY, &["dns", "pluginA"], &[]);
    let problems = resolve(&v, &plugins).unwrap_err();
    assert_eq!(problems, vec![Problem::NotFound("pluginA".into())]);
    assert!(problems[0].to_string().contains("pluginA"));
}

#[test]
fn a_name_in_both_lists_is_a_problem() {
    let plugins = [plugin("dns", false, &[])];
    let v = vc(phase::ALL_NODE_READY, &["dns"], &["dns"]);
    assert_eq!(
        resolve(&v, &plugins).unwrap_err(),
        vec![Problem::EnabledAndDisabled("dns".into())]
    );
}

#[test]
fn dependencies_come_first_ties_by_name() {
    let plugins = [
        plugin("c", false, &["a"]),
        plugin("b", false, &["c"]),
        plugin("a", false, &[]),
        plugin("d", false, &[]),
    ];
    let v = vc(phase::ALL_NODE_READY, &["a", "b", "c", "d"], &[]);
    assert_eq!(names(&resolve(&v, &plugins).unwrap()), ["a", "d", "c", "b"]);
}

#[test]
fn cycle_names_its_members() {
    let plugins = [
        plugin("a", false, &["b"]),
        plugin("b", false, &["c"]),
        plugin("c", false, &["a"]),
        plugin("free", false, &[]),
    ];
    let v = vc(phase::ALL_NODE_READY, &["a", "b", "c", "free"], &[]);
    assert_eq!(
        resolve(&v, &plugins).unwrap_err(),
        vec![Problem::Cycle(vec!["a".into(), "b".into(), "c".into()])]
    );
}

#[test]
fn dependency_problems() {
    let plugins = [
        plugin("a", false, &["ghost"]),
        plugin("b", false, &["off"]),
        plugin("off", false, &[]),
    ];
    let v = vc(phase::ALL_NODE_READY, &["a", "b"], &[]);
    let problems = resolve(&v, &plugins).unwrap_err();
    assert_eq!(
        problems,
        vec![
            Problem::DependencyNotFound {
                plugin: "a".into(),
                dependency: "ghost".into()
            },
            Problem::DependencyNotInSet {
                plugin: "b".into(),
                dependency: "off".into()
            },
        ]
    );
}

#[test]
fn unresolved_set_waits_with_condition_and_event() {
    let plugins = [plugin("dns", false, &[])];
    let v = vc(phase::ALL_NODE_READY, &["dns", "pluginA"], &[]);
    let plan = run(&v, &plugins, &[]);
    assert!(plan.steps.is_empty());
    let c = cond(&plan, condition::PLUGINS_RESOLVED).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "PluginNotFound")
    );
    assert!(c.message.contains("pluginA"));
    assert!(
        plan.notes
            .iter()
            .any(|n| n.kind == NoteKind::Warning && n.message.contains("pluginA"))
    );
    assert_eq!(plan.status.phase.as_deref(), Some(phase::ALL_NODE_READY));
}

#[test]
fn the_same_problem_is_not_announced_twice() {
    let plugins = [plugin("dns", false, &[])];
    let v = vc(phase::ALL_NODE_READY, &["pluginA"], &[]);
    let first = run(&v, &plugins, &[]);
    let mut again = v.clone();
    again.status = Some(first.status.clone());
    let second = run(&again, &plugins, &[]);
    assert!(second.notes.is_empty(), "{:?}", second.notes);
}

// ---------------------------------------------------------------------------------------------
// When to start, what next

#[test]
fn nothing_starts_before_all_node_ready() {
    let plugins = [plugin("dns", true, &[])];
    for p in [
        "",
        phase::PREPARING,
        phase::INITIALIZED,
        phase::UPDATING,
        phase::PENDING,
    ] {
        let v = vc(p, &[], &[]);
        let plan = run(&v, &plugins, &[]);
        assert!(plan.steps.is_empty(), "phase {p:?}");
        assert_eq!(phase_of(&plan, "dns"), Some(PluginPhase::Pending));
        assert_eq!(plan.status.phase.as_deref(), (!p.is_empty()).then_some(p));
        let c = cond(&plan, condition::PLUGINS_INSTALLED).unwrap();
        assert_eq!(c.reason, "Waiting");
    }
}

#[test]
fn builtin_readiness_starts_and_sets_all_node_ready() {
    let plugins = [plugin("dns", true, &[])];
    let v = vc(phase::INITIALIZED, &[], &[]);
    let mut obs = observe(&v, &plugins, &[]);
    obs.readiness = Readiness::Ready;
    let plan = plan(&obs, &settings());
    assert_eq!(created(&plan), [("dns".into(), Action::Install, 1)]);
    assert_eq!(plan.status.phase.as_deref(), Some(phase::ALL_NODE_READY));
    assert_eq!(plan.status.update_time, Some(Time(at(NOW))));
    let c = cond(&plan, condition::VIRTUAL_CLUSTER_READY).unwrap();
    assert_eq!(c.status, "True");

    obs.readiness = Readiness::NotReady("node n1 is not Ready".into());
    let plan = super::plan(&obs, &settings());
    assert!(plan.steps.is_empty());
    assert_eq!(plan.status.phase.as_deref(), Some(phase::INITIALIZED));
    assert_eq!(
        cond(&plan, condition::VIRTUAL_CLUSTER_READY)
            .unwrap()
            .message,
        "node n1 is not Ready"
    );
}

#[test]
fn all_independent_plugins_start_at_once_with_attempt_one() {
    let plugins = [
        plugin("a", false, &[]),
        plugin("b", false, &[]),
        plugin("c", false, &[]),
    ];
    let v = vc(phase::ALL_NODE_READY, &["a", "b", "c"], &[]);
    let plan = run(&v, &plugins, &[]);
    assert_eq!(
        created(&plan),
        [
            ("a".into(), Action::Install, 1),
            ("b".into(), Action::Install, 1),
            ("c".into(), Action::Install, 1)
        ]
    );
    let Step::CreateJob(first) = &plan.steps[0] else {
        panic!("not a create")
    };
    assert_eq!(
        first.name(),
        contract::job_name("vc1", "a", &hash(&plugins[0]), Action::Install, 1)
    );
    assert_eq!(first.timeout_seconds, 600);
    for e in &plan.status.plugins {
        assert_eq!(e.phase, PluginPhase::Installing);
        assert_eq!(e.attempts, 1);
    }
    assert_eq!(plan.status.plugin_progress.as_deref(), Some("0/3"));
}

#[test]
fn parallel_jobs_are_bounded() {
    let plugins = [
        plugin("a", false, &[]),
        plugin("b", false, &[]),
        plugin("c", false, &[]),
    ];
    let v = vc(phase::ALL_NODE_READY, &["a", "b", "c"], &[]);
    let running = [job(&plugins[0], Action::Install, 1, JobOutcome::Running)];
    let mut s = settings();
    s.max_parallel_jobs = 2;
    let plan = plan(&observe(&v, &plugins, &running), &s);
    assert_eq!(created(&plan), [("b".into(), Action::Install, 1)]);
    let c = plan.status.plugins.iter().find(|e| e.name == "c").unwrap();
    assert_eq!(c.phase, PluginPhase::Pending);
    assert!(c.message.as_deref().unwrap().contains("free slot"));
}

#[test]
fn dependents_wait_for_their_dependencies() {
    let plugins = [plugin("cni", false, &[]), plugin("dns", false, &["cni"])];
    let v = vc(phase::ALL_NODE_READY, &["cni", "dns"], &[]);
    let plan = run(&v, &plugins, &[]);
    assert_eq!(created(&plan), [("cni".into(), Action::Install, 1)]);
    let dns = plan
        .status
        .plugins
        .iter()
        .find(|e| e.name == "dns")
        .unwrap();
    assert_eq!(dns.message.as_deref(), Some("waiting for cni"));

    let running = [job(&plugins[0], Action::Install, 1, JobOutcome::Running)];
    assert!(run(&v, &plugins, &running).steps.is_empty());

    let done = [job(&plugins[0], Action::Install, 1, JobOutcome::Succeeded)];
    let plan = run(&v, &plugins, &done);
    assert_eq!(created(&plan), [("dns".into(), Action::Install, 1)]);
}

#[test]
fn running_job_means_installing_and_no_new_job() {
    let plugins = [plugin("a", false, &[])];
    let v = vc(phase::ALL_NODE_READY, &["a"], &[]);
    let jobs = [job(&plugins[0], Action::Install, 1, JobOutcome::Running)];
    let plan = run(&v, &plugins, &jobs);
    assert!(plan.steps.is_empty());
    assert_eq!(phase_of(&plan, "a"), Some(PluginPhase::Installing));
    // A Job the status does not know yet (created before a restart) is adopted, not duplicated.
    let e = &plan.status.plugins[0];
    assert_eq!(e.job_name.as_deref(), Some(jobs[0].name.as_str()));
    assert_eq!(e.attempts, 1);
    assert_eq!(e.started_at, Some(Time(at(NOW - 60))));
}

#[test]
fn unmarked_job_is_deleted_and_retried_after_backoff() {
    let plugins = [plugin("a", false, &[])];
    let v = vc(phase::ALL_NODE_READY, &["a"], &[]);
    let mut bare = job(&plugins[0], Action::Install, 1, JobOutcome::Running);
    bare.injected = false;
    let plan = run(&v, &plugins, std::slice::from_ref(&bare));
    assert_eq!(deleted(&plan), [bare.name.clone()]);
    assert!(created(&plan).is_empty());
    let c = cond(&plan, condition::WEBHOOK_MUTATING).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "NotMutated")
    );
    assert!(c.message.contains("not mutated by the plugin webhook"));
    let e = &plan.status.plugins[0];
    assert_eq!(e.phase, PluginPhase::Pending);
    assert_eq!(e.next_retry_at, Some(Time(at(NOW + 10))));
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(10)));
    assert!(plan.notes.iter().any(|n| n.reason == "WebhookNotMutating"));
    assert_ne!(plan.status.phase.as_deref(), Some(phase::COMPLETED));

    // Once gone, the status carries the retry time; before it, nothing happens.
    let v2 = with_entries(v.clone(), plan.status.plugins.clone());
    let waiting = run(&v2, &plugins, &[]);
    assert!(waiting.steps.is_empty());
    assert!(waiting.notes.is_empty(), "{:?}", waiting.notes);
    // After it, attempt again.
    let mut later = observe(&v2, &plugins, &[]);
    later.now = at(NOW + 11);
    assert_eq!(
        created(&super::plan(&later, &settings())),
        [("a".into(), Action::Install, 1)]
    );
}

#[test]
fn an_unmarked_succeeded_job_never_counts() {
    let plugins = [plugin("a", false, &[])];
    let v = vc(phase::ALL_NODE_READY, &["a"], &[]);
    let mut bare = job(&plugins[0], Action::Install, 1, JobOutcome::Succeeded);
    bare.injected = false;
    let plan = run(&v, &plugins, &[bare]);
    assert_eq!(phase_of(&plan, "a"), Some(PluginPhase::Pending));
    assert_eq!(plan.status.phase.as_deref(), Some(phase::ALL_NODE_READY));
    assert_eq!(
        cond(&plan, condition::PLUGINS_INSTALLED).unwrap().status,
        "False"
    );
}

#[test]
fn failure_is_retried_after_exponential_backoff_then_gives_up() {
    let p = plugin("a", false, &[]);
    let plugins = [p.clone()];
    let v = vc(phase::ALL_NODE_READY, &["a"], &[]);
    // One failure: retry 10 s after it finished (NOW-5), so at NOW+5.
    let one = [job(&p, Action::Install, 1, failed("helm: chart not found"))];
    let plan = run(&v, &plugins, &one);
    assert!(plan.steps.is_empty());
    let e = &plan.status.plugins[0];
    assert_eq!(e.phase, PluginPhase::Pending);
    assert_eq!(e.next_retry_at, Some(Time(at(NOW + 5))));
    assert!(
        e.message
            .as_deref()
            .unwrap()
            .contains("helm: chart not found")
    );
    assert!(
        plan.notes
            .iter()
            .any(|n| n.reason == "InstallFailed" && n.message.contains("helm: chart not found"))
    );
    let mut later = observe(&v, &plugins, &one);
    later.now = at(NOW + 6);
    assert_eq!(
        created(&super::plan(&later, &settings())),
        [("a".into(), Action::Install, 2)]
    );

    // Two failures: 20 s.
    let two = [one[0].clone(), job(&p, Action::Install, 2, failed("again"))];
    let plan = run(&v, &plugins, &two);
    assert_eq!(
        plan.status.plugins[0].next_retry_at,
        Some(Time(at(NOW + 15)))
    );

    // Three: attempts used up, Failed with the reason, no retry timer.
    let three = [
        two[0].clone(),
        two[1].clone(),
        job(&p, Action::Install, 3, failed("last words")),
    ];
    let plan = run(&v, &plugins, &three);
    assert!(plan.steps.is_empty());
    let e = &plan.status.plugins[0];
    assert_eq!(e.phase, PluginPhase::Failed);
    assert!(e.message.as_deref().unwrap().contains("last words"));
    assert!(
        e.message
            .as_deref()
            .unwrap()
            .contains(contract::RETRY_ANNOTATION)
    );
    assert_eq!(plan.requeue_after, None);
    assert!(plan.notes.iter().any(|n| n.reason == "PluginFailed"));
    let c = cond(&plan, condition::PLUGINS_INSTALLED).unwrap();
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Failed"));
}

#[test]
fn retry_annotation_starts_over_after_giving_up() {
    let p = plugin("a", false, &[]);
    let plugins = [p.clone()];
    let mut v = vc(phase::ALL_NODE_READY, &["a"], &[]);
    let jobs: Vec<JobView> = (1..=3)
        .map(|n| job(&p, Action::Install, n, failed("no")))
        .collect();
    assert!(run(&v, &plugins, &jobs).steps.is_empty());
    v.metadata.annotations = Some([(contract::RETRY_ANNOTATION.to_owned(), "1".to_owned())].into());
    let plan = run(&v, &plugins, &jobs);
    assert_eq!(created(&plan), [("a".into(), Action::Install, 4)]);
    let Step::CreateJob(new) = &plan.steps[0] else {
        panic!()
    };
    assert_eq!(new.id.retry, "1");
}

#[test]
fn spec_change_reinstalls_with_a_new_job() {
    let old = plugin("a", false, &[]);
    let mut new = old.clone();
    new.spec.timeout_seconds = Some(30);
    let v = with_entries(
        vc(phase::COMPLETED, &["a"], &[]),
        vec![entry(
            "a",
            PluginPhase::Succeeded,
            &hash(&old),
            Some("j1"),
            1,
        )],
    );
    let jobs = [job(&old, Action::Install, 1, JobOutcome::Succeeded)];
    let plan = run(&v, std::slice::from_ref(&new), &jobs);
    assert_eq!(created(&plan), [("a".into(), Action::Install, 2)]);
    let Step::CreateJob(j) = &plan.steps[0] else {
        panic!()
    };
    assert_eq!(j.id.spec_hash, hash(&new));
    assert_eq!(j.timeout_seconds, 30);
    // Completed no longer holds while reinstalling.
    assert_eq!(plan.status.phase.as_deref(), Some(phase::ALL_NODE_READY));
    assert_eq!(plan.status.plugin_progress.as_deref(), Some("0/1"));
}

#[test]
fn spec_change_also_clears_a_failed_plugin() {
    let old = plugin("a", false, &[]);
    let mut new = old.clone();
    new.spec.timeout_seconds = Some(30);
    let v = vc(phase::ALL_NODE_READY, &["a"], &[]);
    let jobs: Vec<JobView> = (1..=3)
        .map(|n| job(&old, Action::Install, n, failed("no")))
        .collect();
    let plan = run(&v, &[new], &jobs);
    assert_eq!(created(&plan), [("a".into(), Action::Install, 4)]);
}

#[test]
fn a_running_job_for_an_old_spec_is_stopped_first() {
    let old = plugin("a", false, &[]);
    let mut new = old.clone();
    new.spec.timeout_seconds = Some(30);
    let v = vc(phase::ALL_NODE_READY, &["a"], &[]);
    let jobs = [job(&old, Action::Install, 1, JobOutcome::Running)];
    let plan = run(&v, &[new], &jobs);
    assert_eq!(deleted(&plan), [jobs[0].name.clone()]);
    assert!(created(&plan).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Verdict

#[test]
fn completed_only_when_every_plugin_succeeded() {
    let plugins = [
        plugin("a", false, &[]),
        plugin("b", false, &[]),
        plugin("c", false, &[]),
    ];
    let v = vc(phase::ALL_NODE_READY, &["a", "b", "c"], &[]);
    let mut jobs: Vec<JobView> = plugins
        .iter()
        .map(|p| job(p, Action::Install, 1, JobOutcome::Succeeded))
        .collect();
    jobs[2].outcome = JobOutcome::Running;
    jobs[2].finished_at = None;
    let plan = run(&v, &plugins, &jobs);
    assert_eq!(plan.status.phase.as_deref(), Some(phase::ALL_NODE_READY));
    assert_eq!(plan.status.plugin_progress.as_deref(), Some("2/3"));

    jobs[2].outcome = JobOutcome::Succeeded;
    jobs[2].finished_at = Some(at(NOW - 1));
    let plan = run(&v, &plugins, &jobs);
    assert_eq!(plan.status.phase.as_deref(), Some(phase::COMPLETED));
    assert_eq!(plan.status.plugin_progress.as_deref(), Some("3/3"));
    assert_eq!(
        plan.status.reason.as_deref(),
        Some("all 3 plugins installed")
    );
    assert_eq!(
        cond(&plan, condition::PLUGINS_INSTALLED).unwrap().status,
        "True"
    );
    assert!(plan.notes.iter().any(|n| n.reason == "Completed"));
    assert_eq!(plan.installed.len(), 3);
    assert_eq!(plan.installed[0].took, Duration::from_secs(55));
}

#[test]
fn an_empty_set_completes() {
    let v = vc(phase::ALL_NODE_READY, &[], &[]);
    let plan = run(&v, &[], &[]);
    assert_eq!(plan.status.phase.as_deref(), Some(phase::COMPLETED));
    assert_eq!(plan.status.plugin_progress.as_deref(), Some("0/0"));
}

#[test]
fn missing_kubeconfig_waits_and_says_so() {
    let plugins = [plugin("a", false, &[])];
    let v = vc(phase::ALL_NODE_READY, &["a"], &[]);
    let mut obs = observe(&v, &plugins, &[]);
    obs.kubeconfig =
        Kubeconfig::Missing("no spec.kubeconfig and no Secret vc1-admin-config".into());
    let plan = plan(&obs, &settings());
    assert!(plan.steps.is_empty());
    let c = cond(&plan, condition::KUBECONFIG_AVAILABLE).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "KubeconfigMissing")
    );
    assert!(
        plan.status.plugins[0]
            .message
            .as_deref()
            .unwrap()
            .contains("vc1-admin-config")
    );
}

#[test]
fn refused_kubeconfig_starts_nothing_and_names_the_field_once() {
    let plugins = [plugin("a", false, &[])];
    let v = vc(phase::ALL_NODE_READY, &["a"], &[]);
    let why = "the kubeconfig in spec.kubeconfig is refused: users[0].user.exec: runs a command";
    let mut obs = observe(&v, &plugins, &[]);
    obs.kubeconfig = Kubeconfig::Refused(why.into());
    let first = plan(&obs, &settings());
    assert!(first.steps.is_empty(), "{:?}", first.steps);
    let c = cond(&first, condition::KUBECONFIG_AVAILABLE).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str(), c.message.as_str()),
        ("False", "KubeconfigRefused", why)
    );
    let warned: Vec<_> = first
        .notes
        .iter()
        .filter(|n| n.reason == "KubeconfigRefused")
        .collect();
    assert_eq!(warned.len(), 1, "{:?}", first.notes);
    assert_eq!(warned[0].kind, NoteKind::Warning);
    assert!(
        first.status.plugins[0]
            .message
            .as_deref()
            .unwrap()
            .contains("users[0].user.exec")
    );
    // The next pass finds the condition written: no second event.
    let mut again = v.clone();
    again.status = Some(first.status.clone());
    let mut obs = observe(&again, &plugins, &[]);
    obs.kubeconfig = Kubeconfig::Refused(why.into());
    let second = plan(&obs, &settings());
    assert!(second.notes.iter().all(|n| n.reason != "KubeconfigRefused"));
}

#[test]
fn transition_time_kept_while_status_holds() {
    let plugins = [plugin("a", false, &[])];
    let v = vc(phase::ALL_NODE_READY, &["a"], &[]);
    let first = run(&v, &plugins, &[]);
    let mut again = v.clone();
    again.status = Some(first.status.clone());
    let mut obs = observe(&again, &plugins, &[]);
    obs.now = at(NOW + 100);
    let second = plan(&obs, &settings());
    assert_eq!(
        cond(&second, condition::PLUGINS_RESOLVED)
            .unwrap()
            .last_transition_time,
        Time(at(NOW))
    );
}

#[test]
fn succeeded_status_survives_a_removed_job() {
    let plugins = [plugin("a", false, &[])];
    let v = with_entries(
        vc(phase::COMPLETED, &["a"], &[]),
        vec![entry(
            "a",
            PluginPhase::Succeeded,
            &hash(&plugins[0]),
            Some("j"),
            1,
        )],
    );
    let plan = run(&v, &plugins, &[]);
    assert!(plan.steps.is_empty());
    assert_eq!(plan.status.phase.as_deref(), Some(phase::COMPLETED));
    assert!(plan.notes.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Uninstall

#[test]
fn disabled_plugin_is_uninstalled_then_marked_uninstalled() {
    let p = plugin("a", false, &[]);
    let plugins = [p.clone()];
    let v = with_entries(
        vc(phase::COMPLETED, &[], &[]),
        vec![entry("a", PluginPhase::Succeeded, &hash(&p), Some("j"), 1)],
    );
    let installed = job(&p, Action::Install, 1, JobOutcome::Succeeded);
    let plan = run(&v, &plugins, std::slice::from_ref(&installed));
    assert_eq!(created(&plan), [("a".into(), Action::Uninstall, 2)]);
    assert_eq!(phase_of(&plan, "a"), Some(PluginPhase::Uninstalling));
    assert_eq!(plan.status.phase.as_deref(), Some(phase::ALL_NODE_READY));
    assert_eq!(
        cond(&plan, condition::PLUGINS_INSTALLED).unwrap().reason,
        "Uninstalling"
    );

    let v2 = with_entries(v.clone(), plan.status.plugins.clone());
    let jobs = [
        installed,
        job(&p, Action::Uninstall, 2, JobOutcome::Succeeded),
    ];
    let plan = run(&v2, &plugins, &jobs);
    assert!(plan.steps.is_empty());
    assert_eq!(phase_of(&plan, "a"), Some(PluginPhase::Uninstalled));
    assert_eq!(plan.status.phase.as_deref(), Some(phase::COMPLETED));
    assert!(plan.notes.iter().any(|n| n.reason == "PluginUninstalled"));

    // Enabled again: a new install after the uninstall.
    let v3 = with_entries(
        vc(phase::COMPLETED, &["a"], &[]),
        plan.status.plugins.clone(),
    );
    let plan = run(&v3, &plugins, &jobs);
    assert_eq!(created(&plan), [("a".into(), Action::Install, 3)]);
}

#[test]
fn a_failed_uninstall_is_retried_after_backoff_then_gives_up() {
    let p = plugin("a", false, &[]);
    let plugins = [p.clone()];
    let v = with_entries(
        vc(phase::COMPLETED, &[], &[]),
        vec![entry(
            "a",
            PluginPhase::Uninstalling,
            &hash(&p),
            Some("j"),
            2,
        )],
    );
    let installed = job(&p, Action::Install, 1, JobOutcome::Succeeded);
    let one = [
        installed.clone(),
        job(&p, Action::Uninstall, 2, failed("kubectl delete refused")),
    ];
    let plan = run(&v, &plugins, &one);
    assert!(created(&plan).is_empty());
    let e = &plan.status.plugins[0];
    assert_eq!(e.phase, PluginPhase::Uninstalling);
    assert_eq!(
        e.message.as_deref(),
        Some("uninstall attempt failed: kubectl delete refused")
    );
    assert!(e.next_retry_at.is_some());
    assert!(plan.notes.iter().all(|n| n.reason != "UninstallFailed"));

    let three = [
        installed,
        job(&p, Action::Uninstall, 2, failed("first")),
        job(&p, Action::Uninstall, 3, failed("second")),
        job(&p, Action::Uninstall, 4, failed("last words")),
    ];
    let plan = run(&v, &plugins, &three);
    assert!(plan.steps.is_empty());
    let e = &plan.status.plugins[0];
    assert_eq!(e.phase, PluginPhase::Failed);
    let message = e.message.as_deref().unwrap();
    assert!(
        message.starts_with("uninstall failed: last words"),
        "{message}"
    );
    assert!(message.contains("3 failed attempts"), "{message}");
    assert!(plan.notes.iter().any(|n| n.reason == "UninstallFailed"));
}

#[test]
fn a_plugin_that_never_got_a_job_just_leaves() {
    let p = plugin("a", false, &[]);
    let v = with_entries(
        vc(phase::ALL_NODE_READY, &[], &[]),
        vec![entry("a", PluginPhase::Pending, &hash(&p), None, 0)],
    );
    let plan = run(&v, &[p], &[]);
    assert!(plan.steps.is_empty());
    assert!(plan.status.plugins.is_empty());
}

#[test]
fn deleting_without_uninstall_is_done_at_once() {
    let p = plugin("a", false, &[]);
    let v = with_entries(
        vc(phase::COMPLETED, &["a"], &[]),
        vec![entry("a", PluginPhase::Succeeded, &hash(&p), Some("j"), 1)],
    );
    let mut obs = observe(&v, std::slice::from_ref(&p), &[]);
    obs.deletion = Some(Deletion {
        uninstall: false,
        deadline_passed: false,
    });
    let plan = plan(&obs, &settings());
    assert!(plan.steps.is_empty());
    assert!(plan.cleanup_done);
}

#[test]
fn deleting_with_uninstall_waits_for_jobs_until_the_deadline() {
    let p = plugin("a", false, &[]);
    let v = with_entries(
        vc(phase::COMPLETED, &["a"], &[]),
        vec![entry("a", PluginPhase::Succeeded, &hash(&p), Some("j"), 1)],
    );
    let installed = [job(&p, Action::Install, 1, JobOutcome::Succeeded)];
    let mut obs = observe(&v, std::slice::from_ref(&p), &installed);
    obs.deletion = Some(Deletion {
        uninstall: true,
        deadline_passed: false,
    });
    let first = plan(&obs, &settings());
    assert_eq!(created(&first), [("a".into(), Action::Uninstall, 2)]);
    assert!(!first.cleanup_done);

    let jobs = [
        installed[0].clone(),
        job(&p, Action::Uninstall, 2, JobOutcome::Running),
    ];
    let v2 = with_entries(v.clone(), first.status.plugins.clone());
    let mut obs = observe(&v2, std::slice::from_ref(&p), &jobs);
    obs.deletion = Some(Deletion {
        uninstall: true,
        deadline_passed: false,
    });
    assert!(!plan(&obs, &settings()).cleanup_done);
    obs.deletion = Some(Deletion {
        uninstall: true,
        deadline_passed: true,
    });
    assert!(plan(&obs, &settings()).cleanup_done);

    let done = [
        installed[0].clone(),
        job(&p, Action::Uninstall, 2, JobOutcome::Succeeded),
    ];
    let mut obs = observe(&v2, std::slice::from_ref(&p), &done);
    obs.deletion = Some(Deletion {
        uninstall: true,
        deadline_passed: false,
    });
    assert!(plan(&obs, &settings()).cleanup_done);
}

// ---------------------------------------------------------------------------------------------
// Backoff

#[test]
fn backoff_doubles_and_is_capped() {
    let s = settings();
    let got: Vec<u64> = (1..=7).map(|n| backoff(&s, n).as_secs()).collect();
    assert_eq!(got, [10, 20, 40, 80, 160, 300, 300]);
    assert_eq!(backoff(&s, 0).as_secs(), 10);
    assert_eq!(backoff(&s, u32::MAX).as_secs(), 300);
}

#[test]
fn a_rejected_job_is_reported_and_retried_after_backoff() {
    let plugins = [plugin("a", false, &[])];
    let v = vc(phase::ALL_NODE_READY, &["a"], &[]);
    let rejected = [Rejection {
        plugin: "a".to_owned(),
        message: "admission webhook denied the request: plugin a: hostPath /etc is not allowed"
            .to_owned(),
    }];
    let mut obs = observe(&v, &plugins, &[]);
    obs.rejected = &rejected;
    let plan = plan(&obs, &settings());
    assert!(plan.steps.is_empty());
    let e = &plan.status.plugins[0];
    assert_eq!(e.phase, PluginPhase::Pending);
    assert!(
        e.message
            .as_deref()
            .unwrap()
            .contains("hostPath /etc is not allowed")
    );
    assert_eq!(e.next_retry_at, Some(Time(at(NOW + 10))));
    assert!(
        plan.notes
            .iter()
            .any(|n| n.reason == "JobRejected" && n.plugin.as_deref() == Some("a"))
    );
}

#[test]
fn a_retry_time_once_written_does_not_move() {
    let p = plugin("a", false, &[]);
    let v = vc(phase::ALL_NODE_READY, &["a"], &[]);
    let mut failed_job = job(&p, Action::Install, 1, failed("boom"));
    failed_job.finished_at = None;
    let first = run(
        &v,
        std::slice::from_ref(&p),
        std::slice::from_ref(&failed_job),
    );
    let retry = first.status.plugins[0].next_retry_at.clone();
    assert_eq!(retry, Some(Time(at(NOW + 10))));
    let v2 = with_entries(v.clone(), first.status.plugins.clone());
    let mut later = observe(
        &v2,
        std::slice::from_ref(&p),
        std::slice::from_ref(&failed_job),
    );
    later.now = at(NOW + 5);
    let second = plan(&later, &settings());
    assert_eq!(second.status.plugins[0].next_retry_at, retry);
    assert!(second.notes.is_empty(), "{:?}", second.notes);
    later.now = at(NOW + 10);
    assert_eq!(
        created(&plan(&later, &settings())),
        [("a".into(), Action::Install, 2)]
    );
}

#[test]
fn dependents_are_uninstalled_before_their_dependencies() {
    let cni = plugin("cni", false, &[]);
    let dns = plugin("dns", false, &["cni"]);
    let plugins = [cni.clone(), dns.clone()];
    let v = with_entries(
        vc(phase::COMPLETED, &[], &[]),
        vec![
            entry("cni", PluginPhase::Succeeded, &hash(&cni), Some("c1"), 1),
            entry("dns", PluginPhase::Succeeded, &hash(&dns), Some("d1"), 1),
        ],
    );
    let jobs = [
        job(&cni, Action::Install, 1, JobOutcome::Succeeded),
        job(&dns, Action::Install, 1, JobOutcome::Succeeded),
    ];
    let plan = run(&v, &plugins, &jobs);
    assert_eq!(created(&plan), [("dns".into(), Action::Uninstall, 2)]);
    let waiting = plan
        .status
        .plugins
        .iter()
        .find(|e| e.name == "cni")
        .unwrap();
    assert_eq!(
        waiting.message.as_deref(),
        Some("waiting for dns to be uninstalled first")
    );

    // dns uninstalled: now cni goes.
    let mut entries = plan.status.plugins.clone();
    for e in &mut entries {
        if e.name == "dns" {
            e.phase = PluginPhase::Uninstalled;
        }
    }
    let v2 = with_entries(v.clone(), entries);
    let jobs2 = [
        jobs[0].clone(),
        jobs[1].clone(),
        job(&dns, Action::Uninstall, 2, JobOutcome::Succeeded),
    ];
    assert_eq!(
        created(&run(&v2, &plugins, &jobs2)),
        [("cni".into(), Action::Uninstall, 2)]
    );
}

#[test]
fn finished_jobs_of_older_specs_go_once_the_new_spec_succeeded() {
    let old = plugin("a", false, &[]);
    let mut new = old.clone();
    new.spec.timeout_seconds = Some(30);
    let v = vc(phase::ALL_NODE_READY, &["a"], &[]);
    let old_done = job(&old, Action::Install, 1, JobOutcome::Succeeded);
    let new_running = job(&new, Action::Install, 2, JobOutcome::Running);
    // While the new spec installs, the old Job stays (it is the record of what is installed).
    let plan = run(
        &v,
        std::slice::from_ref(&new),
        &[old_done.clone(), new_running],
    );
    assert!(deleted(&plan).is_empty());
    let new_done = job(&new, Action::Install, 2, JobOutcome::Succeeded);
    let plan = run(
        &v,
        std::slice::from_ref(&new),
        &[old_done.clone(), new_done.clone()],
    );
    assert_eq!(deleted(&plan), std::slice::from_ref(&old_done.name));
    assert_eq!(phase_of(&plan, "a"), Some(PluginPhase::Succeeded));
    // Once it is being deleted, no second delete.
    let mut going = old_done;
    going.deleting = true;
    assert!(
        run(&v, std::slice::from_ref(&new), &[going, new_done])
            .steps
            .is_empty()
    );
}

const OUTAGE: &str = "Internal error occurred: failed calling webhook \"plugin-webhook.kosmos.io\": failed to call webhook: Post \"https://plugin-webhook.kosmos-system.svc:443/mutate?timeout=10s\": dial tcp 10.0.0.9:443: connect: connection refused";

fn webhook_condition(
    status: &str,
    reason: &str,
    since: i64,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        type_: condition::WEBHOOK_MUTATING.into(),
        status: status.into(),
        reason: reason.into(),
        message: "earlier".into(),
        last_transition_time: Time(at(since)),
        observed_generation: None,
    }
}

fn with_condition(
    mut vc: VirtualCluster,
    c: k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition,
) -> VirtualCluster {
    if let Some(s) = vc.status.as_mut() {
        s.conditions.push(c);
    }
    vc
}

/// The plan for a reconciliation in which the API server could not call the webhook for `a`.
fn outage_plan(v: &VirtualCluster, plugins: &[VirtualClusterPlugin]) -> Plan {
    let rejected = [Rejection {
        plugin: "a".to_owned(),
        message: OUTAGE.to_owned(),
    }];
    let mut obs = observe(v, plugins, &[]);
    obs.rejected = &rejected;
    obs.webhook_unavailable = Some(OUTAGE.into());
    plan(&obs, &settings())
}

#[test]
fn outage_backoff_grows_with_the_outage_and_is_bounded() {
    let s = settings();
    let d = |since: i64| outage_backoff(&s, at(NOW - since), at(NOW)).as_secs();
    // Retries at 10, 20, 40, 80, 160, 320, then every 300 s after the outage began.
    assert_eq!(
        [d(0), d(10), d(20), d(40), d(80), d(160), d(320), d(100_000)],
        [10, 10, 20, 40, 80, 160, 300, 300]
    );
}

#[test]
fn a_webhook_outage_is_said_once_in_status_and_events() {
    let plugins = [plugin("a", false, &[])];
    let v = vc(phase::ALL_NODE_READY, &["a"], &[]);
    let plan = outage_plan(&v, &plugins);
    assert!(plan.steps.is_empty());
    let c = cond(&plan, condition::WEBHOOK_MUTATING).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "WebhookUnavailable")
    );
    assert!(c.message.contains("connection refused"), "{}", c.message);
    assert_eq!(c.last_transition_time, Time(at(NOW)));
    let e = &plan.status.plugins[0];
    assert_eq!(e.phase, PluginPhase::Pending);
    assert!(
        e.message
            .as_deref()
            .unwrap()
            .contains("could not call the webhook")
    );
    assert_eq!(e.next_retry_at, Some(Time(at(NOW + 10))));
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(10)));
    let warnings: Vec<_> = plan
        .notes
        .iter()
        .filter(|n| n.kind == NoteKind::Warning)
        .map(|n| n.reason)
        .collect();
    assert_eq!(
        warnings,
        ["WebhookUnavailable"],
        "one event, not one per plugin"
    );
    // The PluginsInstalled verdict does not call the plugin failed.
    assert_ne!(
        cond(&plan, condition::PLUGINS_INSTALLED).unwrap().reason,
        "Failed"
    );
}

#[test]
fn an_ongoing_outage_backs_off_from_its_start_without_new_events() {
    let plugins = [plugin("a", false, &[])];
    let v = with_condition(
        vc(phase::ALL_NODE_READY, &["a"], &[]),
        webhook_condition("False", "WebhookUnavailable", NOW - 40),
    );
    let plan = outage_plan(&v, &plugins);
    assert_eq!(
        plan.status.plugins[0].next_retry_at,
        Some(Time(at(NOW + 40)))
    );
    let c = cond(&plan, condition::WEBHOOK_MUTATING).unwrap();
    assert_eq!(c.last_transition_time, Time(at(NOW - 40)));
    assert!(plan.notes.iter().all(|n| n.reason != "WebhookUnavailable"));
    // Long outages retry at the cap.
    let v = with_condition(
        vc(phase::ALL_NODE_READY, &["a"], &[]),
        webhook_condition("False", "WebhookUnavailable", NOW - 10_000),
    );
    let plan = outage_plan(&v, &plugins);
    assert_eq!(
        plan.status.plugins[0].next_retry_at,
        Some(Time(at(NOW + 300)))
    );
}

#[test]
fn an_outage_after_a_missing_mark_starts_its_own_clock() {
    let plugins = [plugin("a", false, &[])];
    let v = with_condition(
        vc(phase::ALL_NODE_READY, &["a"], &[]),
        webhook_condition("False", "NotMutated", NOW - 10_000),
    );
    let plan = outage_plan(&v, &plugins);
    let c = cond(&plan, condition::WEBHOOK_MUTATING).unwrap();
    assert_eq!(c.reason, "WebhookUnavailable");
    assert_eq!(c.last_transition_time, Time(at(NOW)));
    assert_eq!(
        plan.status.plugins[0].next_retry_at,
        Some(Time(at(NOW + 10)))
    );
    assert!(plan.notes.iter().any(|n| n.reason == "WebhookUnavailable"));
}

#[test]
fn a_marked_job_after_an_outage_says_the_webhook_is_back() {
    let plugins = [plugin("a", false, &[])];
    let v = with_condition(
        vc(phase::ALL_NODE_READY, &["a"], &[]),
        webhook_condition("False", "WebhookUnavailable", NOW - 40),
    );
    let jobs = [job(&plugins[0], Action::Install, 1, JobOutcome::Running)];
    let plan = run(&v, &plugins, &jobs);
    let c = cond(&plan, condition::WEBHOOK_MUTATING).unwrap();
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Mutated"));
    assert!(
        plan.notes
            .iter()
            .any(|n| n.reason == "WebhookMutating" && n.kind == NoteKind::Normal)
    );
}

#[test]
fn a_changed_plugin_option_reinstalls_with_a_new_job() {
    let p = plugin("a", false, &[]);
    let option = |value: &str| kosmos_api::PluginOption {
        name: "dnsIP".into(),
        value: Some(value.into()),
        value_from: None,
    };
    let mut v = vc(phase::COMPLETED, &["a"], &[]);
    v.spec.plugin_options = Some(vec![option("10.96.0.10")]);
    let old_hash = contract::install_hash(&p.spec, &[option("10.96.0.10")]);
    let mut old_job = job(&p, Action::Install, 1, JobOutcome::Succeeded);
    old_job.id.spec_hash = old_hash.clone();
    let v = with_entries(
        v,
        vec![entry("a", PluginPhase::Succeeded, &old_hash, Some("j1"), 1)],
    );
    // Unchanged options: nothing to do.
    let plan = run(&v, std::slice::from_ref(&p), std::slice::from_ref(&old_job));
    assert!(created(&plan).is_empty(), "{:?}", plan.steps);

    let mut changed = v.clone();
    changed.spec.plugin_options = Some(vec![option("10.96.0.11")]);
    let plan = run(&changed, std::slice::from_ref(&p), &[old_job]);
    assert_eq!(created(&plan), [("a".into(), Action::Install, 2)]);
    let Step::CreateJob(j) = &plan.steps[0] else {
        panic!()
    };
    assert_eq!(
        j.id.spec_hash,
        contract::install_hash(&p.spec, &[option("10.96.0.11")])
    );
    assert_eq!(plan.status.phase.as_deref(), Some(phase::ALL_NODE_READY));
}

#[test]
fn a_taken_job_name_is_reported_in_an_event_and_the_status() {
    let dns = plugin("dns", false, &[]);
    let cluster = vc(phase::ALL_NODE_READY, &["dns"], &[]);
    let plugins = [dns.clone()];
    // The settle loop created attempt 2 after attempt 1's name was taken.
    let mut moved = job(&dns, Action::Install, 2, JobOutcome::Running);
    moved.taken_names = vec!["squatted".into()];
    let jobs = [moved];
    let taken = [TakenName {
        plugin: "dns".into(),
        job: "squatted".into(),
        instead: Some(jobs[0].name.clone()),
    }];
    let mut obs = observe(&cluster, &plugins, &jobs);
    obs.taken = &taken;
    let plan = plan(&obs, &settings());
    assert!(created(&plan).is_empty(), "{:?}", plan.steps);
    let message = plan.status.plugins[0].message.clone().unwrap_or_default();
    assert!(
        message.contains("job name ns/squatted is taken")
            && message.contains(&format!("created job {} instead", jobs[0].name)),
        "{message}"
    );
    let note = plan
        .notes
        .iter()
        .find(|n| n.reason == "JobNameTaken")
        .expect("a JobNameTaken event");
    assert_eq!(note.kind, NoteKind::Warning);
    assert!(note.message.contains("ns/squatted"), "{}", note.message);
    // Later reconciliations: no second event, the status still says it.
    let plan = run(&cluster, &plugins, &jobs);
    assert!(plan.notes.iter().all(|n| n.reason != "JobNameTaken"));
    let later = plan.status.plugins[0].message.clone().unwrap_or_default();
    assert!(later.contains("job name ns/squatted is taken"), "{later}");
}

#[test]
fn a_job_with_a_forged_mark_never_counts_and_the_plugin_goes_on_under_another_name() {
    let dns = plugin("dns", false, &[]);
    let cluster = vc(phase::ALL_NODE_READY, &["dns"], &[]);
    let plugins = [dns.clone()];
    // Someone made attempt 1 with a mark copied from elsewhere; its pod "succeeded".
    let mut forged = job(&dns, Action::Install, 1, JobOutcome::Succeeded);
    forged.injected = false;
    forged.forged = Some("annotation plugin.kosmos.io/injected does not match this Job".into());
    let jobs = [forged.clone()];
    let plan = run(&cluster, &plugins, &jobs);
    assert_ne!(phase_of(&plan, "dns"), Some(PluginPhase::Succeeded));
    assert_ne!(plan.status.phase.as_deref(), Some(phase::COMPLETED));
    // Left alone, and the next Job takes attempt 2's name.
    assert!(deleted(&plan).is_empty(), "{:?}", plan.steps);
    assert_eq!(created(&plan), vec![("dns".to_owned(), Action::Install, 2)]);
    let c = cond(&plan, condition::JOBS_VERIFIED).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "MarkInvalid")
    );
    assert!(
        c.message.contains(&format!("job ns/{}", forged.name)),
        "{}",
        c.message
    );
    let note = plan
        .notes
        .iter()
        .find(|n| n.reason == "JobMarkInvalid")
        .expect("a JobMarkInvalid event");
    assert_eq!(note.kind, NoteKind::Warning);
    // The attempt 2 Job succeeds: counted, the forged Job still reported, no second event.
    let verified = with_entries(cluster.clone(), plan.status.plugins.clone());
    let mut verified = verified;
    if let Some(s) = verified.status.as_mut() {
        s.conditions = plan.status.conditions.clone();
    }
    let jobs = [forged, job(&dns, Action::Install, 2, JobOutcome::Succeeded)];
    let plan = run(&verified, &plugins, &jobs);
    assert_eq!(phase_of(&plan, "dns"), Some(PluginPhase::Succeeded));
    assert!(plan.notes.iter().all(|n| n.reason != "JobMarkInvalid"));
    assert_eq!(
        cond(&plan, condition::JOBS_VERIFIED).unwrap().status,
        "False"
    );
}

#[test]
fn jobs_whose_marks_never_verify_stop_after_max_attempts() {
    let dns = plugin("dns", false, &[]);
    let cluster = vc(phase::ALL_NODE_READY, &["dns"], &[]);
    let plugins = [dns.clone()];
    let jobs: Vec<JobView> = (1..=3)
        .map(|attempt| {
            let mut j = job(&dns, Action::Install, attempt, JobOutcome::Running);
            j.injected = false;
            j.forged = Some("does not match".into());
            j
        })
        .collect();
    let plan = run(&cluster, &plugins, &jobs);
    assert!(created(&plan).is_empty(), "{:?}", plan.steps);
    assert_eq!(phase_of(&plan, "dns"), Some(PluginPhase::Failed));
    let message = plan.status.plugins[0].message.clone().unwrap_or_default();
    assert!(
        message.contains("3 install jobs carry marks that do not verify"),
        "{message}"
    );
}

/// With a thousand VirtualClusters in a namespace, a plugin edit must not reconcile them all:
/// only those whose set or status names the plugin, all of them for a default plugin, and those
/// whose set is unresolved (the plugin may be what they wait for).
#[test]
fn a_plugin_change_concerns_only_the_virtual_clusters_that_use_it() {
    let dns = plugin("dns", false, &[]);
    let other = plugin("other", false, &[]);
    let base = plugin("base", true, &[]);
    let all = [dns.clone(), other.clone()];
    // As the reconciler leaves it: the status the plan wrote.
    let resolved = |mut v: VirtualCluster| {
        v.status = Some(run(&v, &all, &[]).status);
        v
    };
    let uses = resolved(vc(phase::ALL_NODE_READY, &["dns"], &[]));
    assert!(concerns(&uses, &dns));
    assert!(!concerns(&uses, &other), "a plugin it does not use");
    assert!(concerns(&uses, &base), "a default plugin concerns everyone");

    let disables = resolved(vc(phase::ALL_NODE_READY, &[], &["other"]));
    assert!(concerns(&disables, &other));
    assert!(!concerns(&disables, &dns));

    // Left the set but still uninstalling: its status lists it.
    let mut left = uses.clone();
    left.spec.plugin_set = None;
    assert!(concerns(&left, &dns));

    let waiting = resolved(vc(phase::ALL_NODE_READY, &["dns", "missing"], &[]));
    assert!(
        concerns(&waiting, &other),
        "an unresolved set may be waiting for any plugin"
    );
    let never = vc("", &[], &[]);
    assert!(concerns(&never, &other), "never resolved yet");

    let mut elsewhere = dns.clone();
    elsewhere.metadata.namespace = Some("other-ns".into());
    assert!(!concerns(&uses, &elsewhere));
}
