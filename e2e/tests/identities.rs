//! Acting as someone else: the webhook's safety rule depends on who creates an executor Job, so
//! tests must be able to create one as the operator's ServiceAccount and as another user, and
//! RBAC must really apply to them.

use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kosmos_e2e::{
    Cluster, Identity, TestNamespace, client_as, client_with_token, host, service_account_token,
    wait_for,
};
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use serde_json::json;

/// Who the apiserver thinks `client` is.
async fn whoami(client: &Client) -> Result<(String, Vec<String>)> {
    let review: SelfSubjectReview = Api::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .context("creating a SelfSubjectReview")?;
    let user = review
        .status
        .and_then(|s| s.user_info)
        .context("SelfSubjectReview without userInfo")?;
    Ok((
        user.username.unwrap_or_default(),
        user.groups.unwrap_or_default(),
    ))
}

async fn create_service_account(client: &Client, namespace: &str, name: &str) -> Result<()> {
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &account)
        .await?;
    Ok(())
}

fn bare_job(name: &str) -> Result<Job> {
    Ok(serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": { "backoffLimit": 0, "template": { "spec": {
            "restartPolicy": "Never",
            "containers": [{ "name": "install", "image": "registry.invalid/kosmos/executor:e2e" }],
        }}},
    }))?)
}

fn is_forbidden(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.is_forbidden())
}

#[tokio::test]
async fn admin_acts_as_a_service_account_and_rbac_applies_to_it() -> Result<()> {
    let ns = TestNamespace::create(Cluster::Host, "as-sa").await?;
    let admin = host().await?;
    create_service_account(&admin, ns.name(), "operator").await?;
    let identity = Identity::service_account(ns.name(), "operator");
    let operator = client_as(Cluster::Host, &identity).await?;

    let (user, groups) = whoami(&operator).await?;
    ensure!(
        user == format!("system:serviceaccount:{}:operator", ns.name()),
        "acting as {user}"
    );
    ensure!(
        groups.contains(&format!("system:serviceaccounts:{}", ns.name())),
        "groups {groups:?}"
    );

    // No role yet: RBAC must refuse.
    let jobs: Api<Job> = Api::namespaced(operator.clone(), ns.name());
    match jobs
        .create(&PostParams::default(), &bare_job("before-rbac")?)
        .await
    {
        Err(error) if is_forbidden(&error) => {}
        Err(error) => bail!("expected 403 Forbidden before RBAC, got {error}"),
        Ok(_) => bail!("a ServiceAccount without any role created a Job: RBAC is off"),
    }

    let role: Role = serde_json::from_value(json!({
        "metadata": { "name": "executor-jobs" },
        "rules": [{ "apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "list"] }],
    }))?;
    Api::<Role>::namespaced(admin.clone(), ns.name())
        .create(&PostParams::default(), &role)
        .await?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": "executor-jobs" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "executor-jobs" },
        "subjects": [{ "kind": "ServiceAccount", "name": "operator", "namespace": ns.name() }],
    }))?;
    Api::<RoleBinding>::namespaced(admin.clone(), ns.name())
        .create(&PostParams::default(), &binding)
        .await?;

    // The authorizer's informer sees the new binding within a moment; retry until it does.
    wait_for(
        "the RoleBinding to take effect",
        Duration::from_secs(30),
        || async {
            match jobs.list(&ListParams::default()).await {
                Ok(_) => Ok(Some(())),
                Err(error) if is_forbidden(&error) => Ok(None),
                Err(error) => Err(error.into()),
            }
        },
    )
    .await?;
    let created = jobs
        .create(&PostParams::default(), &bare_job("from-operator")?)
        .await
        .context("creating a Job as the operator's ServiceAccount")?;
    ensure!(created.metadata.uid.is_some());

    // Another user, same namespace, no role: still refused.
    let mallory = client_as(Cluster::Host, &Identity::user("mallory")).await?;
    let result = Api::<Job>::namespaced(mallory, ns.name())
        .create(&PostParams::default(), &bare_job("from-mallory")?)
        .await;
    ensure!(
        matches!(&result, Err(error) if is_forbidden(error)),
        "mallory without a role: {result:?}"
    );
    ns.delete().await
}

#[tokio::test]
async fn service_account_tokens_authenticate() -> Result<()> {
    let ns = TestNamespace::create(Cluster::Host, "sa-token").await?;
    let admin = host().await?;
    create_service_account(&admin, ns.name(), "executor").await?;

    let token = service_account_token(&admin, ns.name(), "executor").await?;
    let executor = client_with_token(Cluster::Host, &token).await?;
    let (user, groups) = whoami(&executor).await?;
    ensure!(
        user == format!("system:serviceaccount:{}:executor", ns.name()),
        "token is {user}"
    );
    ensure!(
        groups.iter().any(|g| g == "system:serviceaccounts"),
        "groups {groups:?}"
    );

    // A token that the apiserver did not sign is refused, so the check above means something.
    let forged = client_with_token(Cluster::Host, "not-a-token").await?;
    let result = whoami(&forged).await;
    ensure!(result.is_err(), "a made-up token authenticated: {result:?}");
    ns.delete().await
}
