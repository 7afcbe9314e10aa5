//! The operator binary's flags as an admin gives them: a bad value stops it before it starts.
#![allow(clippy::unwrap_used)]

use std::process::Command;

/// A watched namespace that is no namespace name: refused before it starts (exit 2, usage),
/// naming the flag and the value, whether it came as the flag or its variable.
#[test]
fn a_watched_namespace_that_is_no_namespace_name_is_refused() {
    for (args, variable) in [
        (&["--namespace", "tenants,Team_B"][..], None),
        (
            &["--namespace", "tenants", "--namespace", "team b"][..],
            None,
        ),
        (&[][..], Some("tenants,Team_B")),
    ] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_virtual-cluster-operator"));
        command
            .args(args)
            // Were the value taken, the operator would fail at its first call to a cluster
            // instead (exit 1), never run.
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .env_remove("OPERATOR_NAMESPACE");
        if let Some(value) = variable {
            command.env("OPERATOR_NAMESPACE", value);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?} {variable:?}: {stderr}"
        );
        let bad = if args.contains(&"team b") {
            "team b"
        } else {
            "Team_B"
        };
        assert!(
            stderr.contains("--namespace")
                && stderr.contains(&format!("\"{bad}\" is not a namespace name")),
            "{args:?} {variable:?}: {stderr}"
        );
    }
}
