use super::*;

/// What `e2e/cluster.sh` and Kosmos write: inline CA, client certificate and key.
const GOOD: &str = r"
apiVersion: v1
kind: Config
preferences: {}
clusters:
- name: other
  cluster:
    server: https://10.0.0.1:6443
- name: virtual
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority-data: Y2E=
    tls-server-name: apiserver.local
    extensions:
    - name: client.authentication.k8s.io/exec
      extension: {audience: x}
users:
- name: admin
  user:
    client-certificate-data: Y2VydA==
    client-key-data: a2V5
contexts:
- name: virtual
  context:
    cluster: virtual
    user: admin
    namespace: kube-system
current-context: virtual
";

fn with_user(user: &str) -> String {
    format!(
        "clusters:\n- name: c\n  cluster:\n    server: https://h:6443\n    certificate-authority-data: Y2E=\n\
         users:\n- name: u\n  user:\n{user}\n\
         contexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n"
    )
}

fn with_cluster(cluster: &str) -> String {
    format!(
        "clusters:\n- name: c\n  cluster:\n{cluster}\n\
         users:\n- name: u\n  user:\n    token: abc\n\
         contexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n"
    )
}

fn refused(text: &str) -> FieldError {
    match check(text.as_bytes()) {
        Ok(safe) => panic!("accepted:\n{text}\nas\n{}", safe.to_yaml()),
        Err(e) => e,
    }
}

#[test]
fn inline_credentials_and_https_are_accepted() {
    let safe = check(GOOD.as_bytes()).expect("accepted");
    assert_eq!(safe.server(), "https://127.0.0.1:6443");
    let token = check(with_user("    token: abc.def").as_bytes()).expect("accepted");
    assert_eq!(token.server(), "https://h:6443");
}

#[test]
fn the_copy_holds_only_the_current_context_and_checked_fields() {
    let out = check(GOOD.as_bytes()).unwrap().to_yaml();
    assert!(
        !out.contains("10.0.0.1"),
        "other clusters are dropped:\n{out}"
    );
    assert!(!out.contains("extension"), "extensions are dropped:\n{out}");
    assert!(!out.contains("preferences"), "{out}");
    // A client reads it back with every checked field in place.
    let parsed = kube::config::Kubeconfig::from_yaml(&out).expect("a kubeconfig");
    assert_eq!(parsed.current_context.as_deref(), Some("virtual"));
    let cluster = parsed.clusters[0].cluster.as_ref().unwrap();
    assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
    assert_eq!(cluster.certificate_authority_data.as_deref(), Some("Y2E="));
    assert_eq!(cluster.tls_server_name.as_deref(), Some("apiserver.local"));
    let user = parsed.auth_infos[0].auth_info.as_ref().unwrap();
    assert_eq!(user.client_certificate_data.as_deref(), Some("Y2VydA=="));
    assert_eq!(
        parsed.contexts[0]
            .context
            .as_ref()
            .unwrap()
            .namespace
            .as_deref(),
        Some("kube-system")
    );
    // The check is stable: the copy passes it and comes out the same.
    assert_eq!(check(out.as_bytes()).unwrap().to_yaml(), out);
}

#[test]
fn fields_that_run_or_read_something_are_refused_by_name() {
    let cases = [
        (
            "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: /bin/sh\n      args: [-c, 'touch /tmp/pwned']",
            "users[0].user.exec",
            "runs a command",
        ),
        (
            "    auth-provider:\n      name: gcp",
            "users[0].user.auth-provider",
            "provider",
        ),
        (
            "    tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token",
            "users[0].user.tokenFile",
            "reads a file",
        ),
        (
            "    client-certificate: /etc/kubernetes/pki/admin.crt\n    client-key-data: a2V5",
            "users[0].user.client-certificate",
            "reads a file",
        ),
        (
            "    client-certificate-data: Y2VydA==\n    client-key: /etc/kubernetes/pki/admin.key",
            "users[0].user.client-key",
            "reads a file",
        ),
        (
            "    username: admin\n    password: secret",
            "users[0].user.username",
            "basic authentication",
        ),
        ("    as: system:admin", "users[0].user.as", "impersonation"),
        (
            "    token: abc\n    sso-helper: /bin/true",
            "users[0].user.sso-helper",
            "not a field",
        ),
    ];
    for (user, field, why) in cases {
        let e = refused(&with_user(user));
        assert_eq!(e.field, field, "{e}");
        assert!(e.message.contains(why), "{e}");
    }
}

#[test]
fn cluster_fields_that_read_files_proxy_or_skip_tls_are_refused() {
    let cases = [
        (
            "    server: https://h\n    certificate-authority: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
            "clusters[0].cluster.certificate-authority",
            "reads a file",
        ),
        (
            "    server: https://h\n    proxy-url: http://attacker:3128",
            "clusters[0].cluster.proxy-url",
            "proxy",
        ),
        (
            "    server: https://h\n    insecure-skip-tls-verify: true",
            "clusters[0].cluster.insecure-skip-tls-verify",
            "certificate",
        ),
        (
            "    server: http://elsewhere:8080",
            "clusters[0].cluster.server",
            "https",
        ),
        (
            "    server: elsewhere:8080",
            "clusters[0].cluster.server",
            "https",
        ),
        (
            "    server: https://user@elsewhere",
            "clusters[0].cluster.server",
            "host",
        ),
        ("    server: https://", "clusters[0].cluster.server", "host"),
        (
            "    certificate-authority-data: Y2E=",
            "clusters[0].cluster.server",
            "missing",
        ),
        (
            "    server: https://h\n    certificate-authority-data: 'not base64!'",
            "clusters[0].cluster.certificate-authority-data",
            "base64",
        ),
    ];
    for (cluster, field, why) in cases {
        let e = refused(&with_cluster(cluster));
        assert_eq!(e.field, field, "{e}");
        assert!(e.message.contains(why), "{e}");
    }
    // Spelled out as false it changes nothing.
    check(with_cluster("    server: https://h\n    insecure-skip-tls-verify: false").as_bytes())
        .expect("accepted");
}

#[test]
fn a_refused_field_counts_in_any_entry_not_only_the_current_one() {
    let spare = GOOD.replace(
        "users:\n",
        "users:\n- name: spare\n  user:\n    exec: {command: /bin/sh}\n",
    );
    assert_eq!(refused(&spare).field, "users[0].user.exec");
}

#[test]
fn a_duplicate_key_is_never_resolved_in_favour_of_one_reader() {
    // A second `users:` would win in one parser and lose in another.
    let twice = format!("{GOOD}users:\n- name: admin\n  user:\n    exec: {{command: /bin/sh}}\n");
    assert!(check(twice.as_bytes()).is_err());
}

#[test]
fn structure_errors_name_the_field() {
    let e = refused("current-context: x\n");
    assert_eq!(e.field, "current-context", "{e}");
    let no_current = GOOD.replace("current-context: virtual", "");
    assert_eq!(refused(&no_current).field, "current-context");
    let dangling = GOOD.replace("current-context: virtual", "current-context: nowhere");
    assert_eq!(refused(&dangling).field, "current-context");
    let no_user = GOOD.replace(
        "    user: admin\n    namespace",
        "    user: ghost\n    namespace",
    );
    let e = refused(&no_user);
    assert!(e.message.contains("ghost"), "{e}");
    let twice = GOOD.replace(
        "- name: other\n  cluster:\n    server: https://10.0.0.1:6443",
        "- name: virtual\n  cluster:\n    server: https://10.0.0.1:6443",
    );
    assert_eq!(refused(&twice).field, "clusters");
    let half = with_user("    client-certificate-data: Y2VydA==");
    assert_eq!(refused(&half).field, "users[0].user.client-key-data");
    assert_eq!(refused("- a list").field, "kubeconfig");
    assert_eq!(refused("merge: <<").field, "merge");
    let anchored = GOOD.replace("preferences: {}", "defaults: &d {exec: x}\npreferences: {}");
    assert_eq!(refused(&anchored).field, "defaults");
}

#[test]
fn errors_never_echo_values() {
    let secret = "s3cr3t-t0ken";
    let bad_yaml = format!("users:\n- name: u\n  user:\n    token: [{secret}\n");
    let e = refused(&bad_yaml);
    assert!(!e.to_string().contains(secret), "{e}");
    let bad_server = with_cluster(&format!("    server: ftp://{secret}"));
    let e = refused(&bad_server);
    assert!(!e.to_string().contains(secret), "{e}");
    assert!(check(&[0xff, 0xfe]).is_err());
}
