//! `plugin-webhook validate` and `render` as a CI pipeline runs them: the binary, real files,
//! exit codes 0 (fine), 1 (findings or a denial) and 2 (cannot run), one line per finding.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_plugin-webhook"))
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = bin().args(args).current_dir(repo()).output().unwrap();
    (
        status.code(),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

#[test]
fn validate_passes_the_docs_examples() {
    // The examples keep node files where the docs tell admins to allow hostPath.
    let (code, stdout, stderr) = run(&[
        "validate",
        "-f",
        "docs/examples",
        "--allowed-host-path-prefixes",
        "/data/kosmos-plugins",
    ]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("0 finding(s)"), "{stderr}");
}

#[test]
fn validate_fails_with_one_line_per_finding() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: kosmos.io/v1alpha1\nkind: VirtualClusterPlugin\nmetadata:\n  name: bad\nspec:\n  timeoutSeconds: 0\n  pluginSources:\n    yaml:\n      path:\n        uri: ftp://example.com/x.yaml\n",
    )
    .unwrap();
    let (code, stdout, _) = run(&["validate", "-f", file.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    let shown = file.display().to_string();
    assert_eq!(
        lines,
        [
            format!(
                "{shown}: VirtualClusterPlugin default/bad: spec.pluginSources.yaml.path.uri: uri must be an http or https URL"
            ),
            format!(
                "{shown}: VirtualClusterPlugin default/bad: spec.timeoutSeconds: must be between 1 and 86400 seconds"
            ),
        ]
    );
}

#[test]
fn validate_cannot_run_without_its_input() {
    let (code, _, stderr) = run(&["validate", "-f", "no/such/file.yaml"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("no/such/file.yaml: cannot read"),
        "{stderr}"
    );
}

#[test]
fn render_prints_a_job_and_denies_with_the_field() {
    let (code, stdout, stderr) = run(&[
        "render",
        "-f",
        "docs/examples/yaml-pv.yaml",
        "-f",
        "docs/examples/virtual-cluster.yaml",
        "--action",
        "uninstall",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let job: k8s_openapi::api::batch::v1::Job = serde_yaml::from_str(&stdout).unwrap();
    let labels = job.metadata.labels.unwrap();
    assert_eq!(labels["plugin.kosmos.io/action"], "uninstall");
    assert!(
        job.metadata
            .annotations
            .unwrap()
            .contains_key("plugin.kosmos.io/injected")
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("etc.yaml");
    let text = std::fs::read_to_string(repo().join("docs/examples/yaml-pv.yaml")).unwrap();
    std::fs::write(&file, text.replace(":/pv", ":/etc")).unwrap();
    let (code, stdout, stderr) = run(&["render", "-f", file.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("denied by the webhook: VirtualClusterPlugin default/")
            && stderr.contains("spec.pluginSources.yaml.path.pvPath: the claim is mounted at /etc"),
        "{stderr}"
    );
}

/// `serve` with a watched namespace that is no namespace name: refused before it starts (exit
/// 2, usage), naming the flag and the value, whether it came as the flag or its variable.
#[test]
fn serve_refuses_a_watched_namespace_that_is_no_namespace_name() {
    for (args, variable) in [
        (&["serve", "--watch-namespace", "tenants,Team_B"][..], None),
        (
            &["--watch-namespace=tenants", "--watch-namespace=Team_B"][..],
            None,
        ),
        (&["serve"][..], Some("tenants,Team_B")),
    ] {
        let mut command = bin();
        command
            .args(args)
            // Were the value taken, the webhook would fail at its first call to a cluster
            // instead (exit 1), never serve.
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .env_remove("PLUGIN_WEBHOOK_WATCH_NAMESPACE");
        if let Some(value) = variable {
            command.env("PLUGIN_WEBHOOK_WATCH_NAMESPACE", value);
        }
        let output = command.current_dir(repo()).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?} {variable:?}: {stderr}"
        );
        assert!(
            stderr.contains("--watch-namespace")
                && stderr.contains("\"Team_B\" is not a namespace name"),
            "{args:?} {variable:?}: {stderr}"
        );
    }
}
